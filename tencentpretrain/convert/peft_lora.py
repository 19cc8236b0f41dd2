"""LoRA adapters: ours <-> Hugging Face PEFT (``adapter_config.json`` +
``adapter_model.safetensors`` for ``LlamaForCausalLM``), both ways, lossless.

Names and row orders come from the HF name map of ``models/layout.py`` (``peft_pairs``):
our q/k rows are in Meta's rotary layout and HF permutes q/k rows; since delta = B A, the
same row permutation applies to B of q and k (A, the input side, is unchanged).
"""
import os

from tencentpretrain.config import ConfigError, ModelConfig
from tencentpretrain.convert import write_json_file
from tencentpretrain.layers.lora import MODULES_TO_SAVE, TARGETS, LoraConfig
from tencentpretrain.models import layout
from tencentpretrain.models.layout import PEFT_MODULES_TO_SAVE as HF_MODULES_TO_SAVE
from tencentpretrain.models.layout import PEFT_TARGETS as HF_TARGETS
from tencentpretrain.models.layout import from_hf_rows, to_hf_rows
from tencentpretrain.utils.files import read_json
from tencentpretrain.utils.weights import WeightsError, load_state_dict_file

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


def _pairs(lora: LoraConfig, config: ModelConfig):
    """(our name, PEFT name, heads to permute or None) of every tensor of an adapter."""
    if config.decoder:
        raise ConfigError(f"{config.source}: PEFT adapter names are mapped for LLaMA-family "
                          "models only; merge a T5 adapter (scripts/merge_lora.py) and export "
                          "the merged weights (scripts/convert_t5_from_tencentpretrain_to_"
                          "huggingface.py)")
    return layout.peft_pairs(lora.targets, lora.modules_to_save, config)


def to_peft(lora: LoraConfig, state, config: ModelConfig):
    """(adapter_config.json dict, PEFT state dict) of our adapter."""
    peft_state = {}
    for ours, hf, heads in _pairs(lora, config):
        if ours not in state:
            raise WeightsError(f"adapter has no tensor {ours}")
        tensor = state[ours]
        peft_state[hf] = (to_hf_rows(tensor, heads) if heads else tensor).contiguous()
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": None,
        "r": lora.r, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
        "target_modules": [HF_TARGETS[t] for t in lora.targets],
        "modules_to_save": [HF_MODULES_TO_SAVE[m] for m in lora.modules_to_save] or None,
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "use_rslora": False, "use_dora": False,
        "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
    }
    return peft_config, peft_state


def _lora_config_from_peft(raw, source):
    if raw.get("peft_type") != "LORA":
        raise ConfigError(f"{source}: peft_type {raw.get('peft_type')!r}, only LORA adapters load")
    unsupported = [("use_dora", False), ("use_rslora", False), ("fan_in_fan_out", False),
                   ("bias", "none"), ("rank_pattern", {}), ("alpha_pattern", {}),
                   ("layers_to_transform", None)]
    for key, plain in unsupported:
        if raw.get(key) not in (plain, None):
            raise ConfigError(f"{source}: {key} {raw[key]!r} is not supported (only plain LoRA)")
    by_hf = {hf: name for name, hf in HF_TARGETS.items()}
    modules = raw.get("target_modules")
    if not isinstance(modules, list):
        raise ConfigError(f"{source}: target_modules must be a list of names, got {modules!r}")
    unknown = [m for m in modules if m not in by_hf]
    if unknown:
        raise ConfigError(f"{source}: unknown target module {unknown[0]!r}; known: "
                          f"{', '.join(by_hf)}")
    save_by_hf = {hf: name for name, hf in HF_MODULES_TO_SAVE.items()}
    to_save = raw.get("modules_to_save") or []
    unknown = [m for m in to_save if m not in save_by_hf]
    if unknown:
        raise ConfigError(f"{source}: unknown module to save {unknown[0]!r}; known: "
                          f"{', '.join(save_by_hf)}")
    # ours lists targets in TARGETS order; PEFT's order carries no meaning
    targets = tuple(t for t in TARGETS if HF_TARGETS[t] in modules)
    lora = LoraConfig(r=raw.get("r"), alpha=raw.get("lora_alpha"),
                      dropout=raw.get("lora_dropout", 0.0), targets=targets,
                      modules_to_save=tuple(m for m in MODULES_TO_SAVE
                                            if HF_MODULES_TO_SAVE[m] in to_save))
    return lora.check(lambda field: f"{source}: {field}")


def read_peft_dir(path, config: ModelConfig):
    """(LoraConfig, state dict in our names) of a PEFT adapter folder."""
    config_file = os.path.join(path, PEFT_CONFIG)
    lora = _lora_config_from_peft(read_json(config_file, ConfigError, expect=dict), config_file)
    weights = os.path.join(path, PEFT_WEIGHTS)
    if not os.path.isfile(weights):
        weights = os.path.join(path, "adapter_model.bin")
    if not os.path.isfile(weights):
        raise WeightsError(f"{path}: no {PEFT_WEIGHTS} (or adapter_model.bin)")
    peft_state = {k.replace(".default.", "."): v for k, v in load_state_dict_file(weights).items()}
    state = {}
    for ours, hf, heads in _pairs(lora, config):
        if hf not in peft_state:
            raise WeightsError(f"{weights}: missing tensor {hf} (config {config.source})")
        tensor = peft_state.pop(hf)
        if heads and (tensor.dim() != 2 or tensor.shape[0] % (2 * heads)):
            raise WeightsError(f"{weights}: tensor {hf} has shape {tuple(tensor.shape)}, which "
                               f"does not fit {heads} heads of config {config.source}")
        state[ours] = (from_hf_rows(tensor, heads) if heads else tensor).contiguous()
    if peft_state:
        raise WeightsError(f"{weights}: unexpected tensor {next(iter(peft_state))} for config "
                           f"{config.source}")
    return lora, state


def write_peft_dir(path, lora: LoraConfig, state, config: ModelConfig):
    """adapter_config.json + adapter_model.safetensors that ``PeftModel.from_pretrained``
    loads onto the HF export of the base model."""
    from tencentpretrain.utils.weights import save_state_dict_file
    peft_config, peft_state = to_peft(lora, state, config)
    os.makedirs(path, exist_ok=True)
    write_json_file(os.path.join(path, PEFT_CONFIG), peft_config)
    save_state_dict_file(peft_state, os.path.join(path, PEFT_WEIGHTS))
