"""LoRA adapter files: ours (``NAME.safetensors`` holding only the adapter and
modules_to_save tensors, ``NAME.json`` beside it with r, alpha, dropout and targets)
and Hugging Face PEFT folders (recognised by their ``adapter_config.json``)."""
import json
import os

from tencentpretrain.config import ConfigError
from tencentpretrain.convert.peft_lora import PEFT_CONFIG, read_peft_dir
from tencentpretrain.layers.lora import LoraConfig
from tencentpretrain.utils.files import read_json
from tencentpretrain.utils.weights import WeightsError, load_state_dict_file, save_state_dict_file

SUFFIX = ".safetensors"


def adapter_files(path):
    """(weights file, settings file) of our adapter named ``path`` (with or without .safetensors)."""
    stem = path.removesuffix(SUFFIX)
    return stem + SUFFIX, stem + ".json"


def save_adapter(path, lora_config, state):
    """Settings first, weights last (atomically): a file that loads always has its settings."""
    weights, settings = adapter_files(path)
    os.makedirs(os.path.dirname(os.path.abspath(weights)), exist_ok=True)
    with open(settings, "w", encoding="utf-8") as f:
        json.dump(lora_config.to_dict(), f, indent=2)
        f.write("\n")
    save_state_dict_file(state, weights)
    return weights


def read_adapter(path, model_config):
    """(LoraConfig, state dict in our tensor names) of our adapter or a PEFT folder."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, PEFT_CONFIG)):
            raise WeightsError(f"{path}: a folder without {PEFT_CONFIG}; expected our adapter "
                               f"(NAME{SUFFIX} + NAME.json) or a PEFT adapter folder")
        return read_peft_dir(path, model_config)
    weights, settings = adapter_files(path)
    if not os.path.isfile(weights):
        raise WeightsError(f"{path}: no such adapter (neither {weights} nor a PEFT folder)")
    if not os.path.isfile(settings):
        raise WeightsError(f"{weights}: no {settings} beside it (r, alpha, targets); not a "
                           "LoRA adapter saved by pretrain.py --use_lora")
    raw = read_json(settings, ConfigError, expect=dict)
    return LoraConfig.from_dict(raw, settings), load_state_dict_file(weights)


def load_adapter(model, path):
    """Inject the adapter at ``path`` into ``model`` (a plain, unpartitioned one) and load it."""
    from tencentpretrain.layers.lora import check_adapter_state, inject_lora
    lora_config, state = read_adapter(path, model.config)
    inject_lora(model, lora_config)
    check_adapter_state(model, {name: t.shape for name, t in state.items()}, path)
    params = dict(model.named_parameters())
    for name, tensor in state.items():
        params[name].data.copy_(tensor)
    return model


def check_adapter(model_config, lora_config, state, path, vocab_size=None):
    """Shapes of an adapter against a config, on the meta device (nothing allocated).
    Without ``vocab_size`` it comes from the adapter's modules_to_save tensors, if any."""
    from tencentpretrain.layers.lora import MODULES_TO_SAVE, check_adapter_state, inject_lora
    from tencentpretrain.model_builder import build_model
    if vocab_size is None:
        rows = [state[f"{MODULES_TO_SAVE[m]}.weight"].shape[0] for m in lora_config.modules_to_save
                if f"{MODULES_TO_SAVE[m]}.weight" in state]
        vocab_size = int(rows[0]) if rows else 1
    model = inject_lora(build_model(model_config, vocab_size, device="meta"), lora_config)
    check_adapter_state(model, {name: t.shape for name, t in state.items()}, path)
