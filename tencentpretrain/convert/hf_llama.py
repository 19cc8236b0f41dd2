"""Hugging Face LLaMA-family checkpoints <-> ours, both ways, shapes from the configs.

Families (``architectures`` in ``config.json``): ``LlamaForCausalLM`` (LLaMA 1/2/3/3.1,
with ``rope_scaling``), ``Qwen2ForCausalLM`` (Qwen2/2.5: q/k/v biases, often tied
embeddings) and ``MistralForCausalLM`` (sliding-window attention). Anything in a
config or checkpoint that our model would not reproduce is refused with one line,
never dropped: a converted model either matches transformers or is not written.

Tensor names and q/k row orders per family are ``models/layout.py``'s (our q/k rows are
in Meta's rotary order, HF's permuted); its maps are exact inverses, so HF -> ours -> HF
is lossless.
"""
import glob
import os

from tencentpretrain.config import ConfigError, ModelConfig, config_from_dict
from tencentpretrain.model_builder import build_model, check_state_dict, vocab_size_of
from tencentpretrain.models import layout
from tencentpretrain.utils.files import read_json
from tencentpretrain.utils.weights import WeightsError, load_state_dict_file

# HF architecture -> model_type; the family decides which config keys are read.
ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
                 "MistralForCausalLM": "mistral"}

def _rope_scaling_from_hf(hf):
    """Our rope_scaling (None for plain RoPE) from ``rope_scaling`` (hub configs) or
    ``rope_parameters`` (transformers >= 5); config_from_dict refuses unknown types."""
    params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    params = {k: v for k, v in params.items() if k != "rope_theta"}
    rope_type = params.get("rope_type", params.get("type", "default"))
    return None if rope_type == "default" else params


def _rope_theta_from_hf(hf):
    return float(hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta",
                                                                              10000.0)))


def _refuse_unsupported(hf, family, source):
    """One ConfigError line for every HF option our model would silently ignore."""
    heads = hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hf["hidden_size"] // heads):
        raise ConfigError(f"{source}: head_dim {hf['head_dim']} differs from hidden_size / "
                          f"num_attention_heads = {hf['hidden_size'] // heads}; not supported")
    if hf.get("partial_rotary_factor", 1.0) != 1.0 or (
            (hf.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0) != 1.0):
        raise ConfigError(f"{source}: partial_rotary_factor is not supported")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ConfigError(f"{source}: {key}=true is not supported for {family}")
    if family == "qwen2" and (hf.get("use_sliding_window") or
                              "sliding_attention" in (hf.get("layer_types") or [])):
        raise ConfigError(f"{source}: Qwen2 sliding-window layers (use_sliding_window) are "
                          "not supported")
    if family == "llama" and hf.get("sliding_window"):
        raise ConfigError(f"{source}: sliding_window is not supported for {family}")


def config_from_hf(hf, source="Hugging Face config.json"):
    """Our ModelConfig from an HF ``config.json`` dict of a supported family."""
    architectures = hf.get("architectures") or []
    if len(architectures) != 1 or architectures[0] not in ARCHITECTURES:
        raise ConfigError(f"{source}: architectures {architectures} not supported; supported: "
                          f"{', '.join(ARCHITECTURES)}")
    family = ARCHITECTURES[architectures[0]]
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers"):
        if not isinstance(hf.get(key), int):
            raise ConfigError(f'{source}: "{key}" missing or not an integer')
    _refuse_unsupported(hf, family, source)
    heads = hf["num_attention_heads"]
    config = config_from_dict({
        "emb_size": hf["hidden_size"], "hidden_size": hf["hidden_size"],
        "feedforward_size": hf["intermediate_size"], "heads_num": heads,
        "layers_num": hf["num_hidden_layers"],
        "local_kv_heads_num": hf.get("num_key_value_heads") or heads,
        "max_seq_length": hf.get("max_position_embeddings", 2048),
        "layernorm_eps": hf.get("rms_norm_eps", 1e-6),
        "rope_theta": _rope_theta_from_hf(hf),
        "rope_scaling": _rope_scaling_from_hf(hf),
        "tie_weights": bool(hf.get("tie_word_embeddings", False)),
        "hidden_act": hf.get("hidden_act", "silu"),
        "qkv_bias": family == "qwen2",
        "sliding_window": hf.get("sliding_window") if family == "mistral" else None,
    }, source=source)
    from tencentpretrain.model_builder import check_registries
    check_registries(config)
    return config


def hf_family(config: ModelConfig):
    """The HF architecture that computes what ``config`` computes, or a ConfigError."""
    exportable = {"embedding": ["word"], "encoder": "transformer", "feed_forward": "gated",
                  "layernorm": "rms", "layernorm_positioning": "pre",
                  "remove_transformer_bias": True, "rotary_position_embedding": True,
                  "remove_embedding_layernorm": True}
    for key, value in exportable.items():
        if getattr(config, key) != value:
            raise ConfigError(f'{config.source}: "{key}" {getattr(config, key)!r} has no Hugging '
                              f"Face LLaMA-family equivalent (needs {value!r})")
    if config.qkv_bias and config.sliding_window:
        raise ConfigError(f"{config.source}: qkv_bias with sliding_window has no Hugging Face "
                          "equivalent")
    if config.qkv_bias:
        return "Qwen2ForCausalLM"
    return "MistralForCausalLM" if config.sliding_window else "LlamaForCausalLM"


def config_to_hf(config: ModelConfig, vocab_size, bos_id=1, eos_id=2, dtype="float32"):
    architecture = hf_family(config)
    family = ARCHITECTURES[architecture]
    hf = {
        "architectures": [architecture], "model_type": family,
        "hidden_size": config.hidden_size, "intermediate_size": config.feedforward_size,
        "num_attention_heads": config.heads_num, "num_hidden_layers": config.layers_num,
        "num_key_value_heads": config.kv_heads_num, "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_length, "rms_norm_eps": config.layernorm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": dict(config.rope_scaling) if config.rope_scaling else None,  # a copy:
        # transformers writes rope_theta into the rope dict it is given
        "tie_word_embeddings": config.tie_weights,
        "hidden_act": config.hidden_act, "vocab_size": vocab_size, "initializer_range": 0.02,
        "bos_token_id": bos_id, "eos_token_id": eos_id, "torch_dtype": dtype,
    }
    if family == "llama":
        hf.update(attention_bias=False, mlp_bias=False)
    elif family == "qwen2":
        hf.update(use_sliding_window=False, sliding_window=None,
                  max_window_layers=config.layers_num)
    else:
        hf.update(sliding_window=config.sliding_window)
    return hf


def hf_to_tencentpretrain(hf_state, config: ModelConfig, source="Hugging Face checkpoint"):
    """Our state dict from an HF one (the family's name map: ``models/layout.py``); a
    tensor the map does not place is an error. Unpermuted tensors are shared, not copied."""
    return layout.from_hf(hf_state, config, source)


def tencentpretrain_to_hf(state, config: ModelConfig):
    return layout.to_hf(state, config)


# What an export writes or a reader reads as weights; an output folder holding any of these
# is refused, so an old export's files never sit beside a new one's.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json", ".pth", ".pt")


def check_output_folder(path, option="--output_model_path"):
    """Refuse an output that is a file, or a folder already holding weight files: the old
    files would stay beside the new ones (a stale shard index is read before a new
    ``model.safetensors``). Other files (a README, logs) are left alone."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise WeightsError(f"{option} {path} is a file; give a folder to write the export into")
    if os.path.isdir(path):
        held = sorted(name for name in os.listdir(path) if name.endswith(WEIGHT_SUFFIXES))
        if held:
            raise WeightsError(f"{option} {path} already holds weight files ({held[0]}"
                               f"{f' and {len(held) - 1} more' if len(held) > 1 else ''}), which "
                               "would mix with the export; give a new or empty folder, or remove "
                               "them")


def checked_hf_state(path, config, config_path, to_hf):
    """The checkpoint at ``path`` in Hugging Face names, for an export: (state, vocabulary
    size, dtype name). Every tensor is checked against ``config`` first (missing, extra,
    shape), so a config that does not fit is refused before anything is written."""
    state = load_state_dict_file(path)
    vocab_size = vocab_size_of(state, path)
    check_state_dict(build_model(config, vocab_size, device="meta"), state, path)
    try:
        hf_state = to_hf(state, config)
    except KeyError as e:
        raise WeightsError(f"{path}: missing tensor {e.args[0]} for config {config_path}") from None
    return hf_state, vocab_size, str(next(iter(hf_state.values())).dtype).replace("torch.", "")


def _weight_files(path):
    """The weight files of an HF folder. A shard index names them exactly, so files that
    sit beside the HF shards in hub folders (Mistral's ``consolidated.safetensors``) are
    not read twice. A folder with both a single weights file and an index is refused: one
    of them is left over from another export."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = os.path.join(path, index_name)
        if os.path.isfile(index):
            singles = [name for name in ("model.safetensors", "pytorch_model.bin")
                       if os.path.isfile(os.path.join(path, name))]
            if singles:
                raise WeightsError(f"{path} holds both {singles[0]} and {index_name}: one is "
                                   "left over from another export; remove the stale one")
            weight_map = read_json(index, WeightsError, expect=dict).get("weight_map")
            if not isinstance(weight_map, dict):
                raise WeightsError(f'{index}: no "weight_map" object; not a shard index')
            files = [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
            missing = [f for f in files if not os.path.isfile(f)]
            if missing:
                raise WeightsError(f"{index} names {missing[0]}, which does not exist")
            return files
    for single in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, single)):
            return [os.path.join(path, single)]
    files = sorted(glob.glob(os.path.join(path, "model-*.safetensors")) or
                   glob.glob(os.path.join(path, "pytorch_model*.bin")))
    if not files:
        raise WeightsError(f"{path}: no model.safetensors, sharded safetensors with an index, "
                           "or pytorch_model*.bin weights")
    return files


def read_hf_config(path):
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise WeightsError(f"{path}: no config.json; expected a Hugging Face model folder")
    return read_json(config_file, ConfigError, expect=dict)


def read_hf_folder(path):
    """(config dict, state dict) of an HF model folder: safetensors or pytorch_model*.bin,
    sharded (with or without an index) or not. Tensors keep their stored dtype."""
    hf_config = read_hf_config(path)
    state = {}
    for file in _weight_files(path):
        state.update(load_state_dict_file(file))
    return hf_config, state


def read_hf_model(path, config_from_hf, hf_to_tencentpretrain):
    """(config, state dict in our layout) of the HF folder at ``path``, converted by one
    family's pair of functions (this module's or hf_t5's). The config is converted before any
    weight is read, so a refused one costs nothing."""
    config = config_from_hf(read_hf_config(path), source=os.path.join(path, "config.json"))
    _, hf_state = read_hf_folder(path)
    return config, hf_to_tencentpretrain(hf_state, config, source=path)
