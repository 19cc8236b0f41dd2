"""Hugging Face LLaMA <-> TencentPretrain LLaMA, both ways, shapes from the configs.

Our checkpoints keep Meta's q/k row order (rotary on adjacent pairs); HF
permutes q/k rows so rotary acts on the two halves of each head. ``_to_hf_rows``
and ``_from_hf_rows`` are exact inverses, so HF -> ours -> HF is lossless.
"""
import glob
import json
import os

import torch

from tencentpretrain.config import ModelConfig, config_from_dict
from tencentpretrain.utils.weights import WeightsError, load_state_dict_file

_LAYER_MAP = {  # ours (per layer) -> HF (per layer)
    "self_attn.linear_layers.0.weight": "self_attn.q_proj.weight",
    "self_attn.linear_layers.1.weight": "self_attn.k_proj.weight",
    "self_attn.linear_layers.2.weight": "self_attn.v_proj.weight",
    "self_attn.final_linear.weight": "self_attn.o_proj.weight",
    "feed_forward.linear_gate.weight": "mlp.gate_proj.weight",
    "feed_forward.linear_1.weight": "mlp.up_proj.weight",
    "feed_forward.linear_2.weight": "mlp.down_proj.weight",
    "layer_norm_1.weight": "input_layernorm.weight",
    "layer_norm_2.weight": "post_attention_layernorm.weight",
}
_GLOBAL_MAP = {
    "embedding.word.embedding.weight": "model.embed_tokens.weight",
    "encoder.layer_norm.weight": "model.norm.weight",
    "target.lm.output_layer.weight": "lm_head.weight",
}


def _to_hf_rows(w, heads):
    rows, cols = w.shape
    return w.view(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _from_hf_rows(w, heads):
    rows, cols = w.shape
    return w.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def config_from_hf(hf):
    """Our ModelConfig from an HF LLaMA ``config.json`` dict."""
    heads = hf["num_attention_heads"]
    return config_from_dict({
        "emb_size": hf["hidden_size"], "hidden_size": hf["hidden_size"],
        "feedforward_size": hf["intermediate_size"], "heads_num": heads,
        "layers_num": hf["num_hidden_layers"],
        "local_kv_heads_num": hf.get("num_key_value_heads") or heads,
        "max_seq_length": hf.get("max_position_embeddings", 2048),
        "layernorm_eps": hf.get("rms_norm_eps", 1e-6),
        "rope_theta": float(hf.get("rope_theta", (hf.get("rope_parameters") or {}).get(
            "rope_theta", 10000.0))),
        "tie_weights": bool(hf.get("tie_word_embeddings", False)),
        "hidden_act": hf.get("hidden_act", "silu"),
    }, source="Hugging Face config.json")


def config_to_hf(config: ModelConfig, vocab_size, bos_id=1, eos_id=2, dtype="float32"):
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": config.hidden_size, "intermediate_size": config.feedforward_size,
        "num_attention_heads": config.heads_num, "num_hidden_layers": config.layers_num,
        "num_key_value_heads": config.kv_heads_num, "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_length, "rms_norm_eps": config.layernorm_eps,
        "rope_theta": config.rope_theta, "tie_word_embeddings": config.tie_weights,
        "hidden_act": config.hidden_act, "vocab_size": vocab_size,
        "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02,
        "bos_token_id": bos_id, "eos_token_id": eos_id, "torch_dtype": dtype,
    }


def hf_to_tencentpretrain(hf_state, config: ModelConfig):
    ours = {}
    for name, hf_name in _GLOBAL_MAP.items():
        if hf_name in hf_state:
            ours[name] = hf_state[hf_name]
    if config.tie_weights:
        ours.pop("target.lm.output_layer.weight", None)
    for i in range(config.layers_num):
        for name, hf_name in _LAYER_MAP.items():
            key = f"model.layers.{i}.{hf_name}"
            if key not in hf_state:
                raise WeightsError(f"Hugging Face checkpoint has no tensor {key}")
            tensor = hf_state[key]
            if name.endswith("linear_layers.0.weight"):
                tensor = _from_hf_rows(tensor, config.heads_num)
            elif name.endswith("linear_layers.1.weight"):
                tensor = _from_hf_rows(tensor, config.kv_heads_num)
            ours[f"encoder.transformer.{i}.{name}"] = tensor.contiguous()
    return ours


def tencentpretrain_to_hf(state, config: ModelConfig):
    hf = {}
    for name, hf_name in _GLOBAL_MAP.items():
        if name in state:
            hf[hf_name] = state[name]
    if config.tie_weights:
        hf.pop("lm_head.weight", None)
    for i in range(config.layers_num):
        for name, hf_name in _LAYER_MAP.items():
            tensor = state[f"encoder.transformer.{i}.{name}"]
            if name.endswith("linear_layers.0.weight"):
                tensor = _to_hf_rows(tensor, config.heads_num)
            elif name.endswith("linear_layers.1.weight"):
                tensor = _to_hf_rows(tensor, config.kv_heads_num)
            hf[f"model.layers.{i}.{hf_name}"] = tensor.contiguous()
    return hf


def read_hf_folder(path):
    """(config dict, state dict) of an HF LLaMA folder: safetensors or pytorch_model*.bin,
    sharded or not."""
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise WeightsError(f"{path}: no config.json; expected a Hugging Face model folder")
    with open(config_file, encoding="utf-8") as f:
        hf_config = json.load(f)
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        files = sorted(glob.glob(os.path.join(path, "pytorch_model*.bin")))
    if not files:
        raise WeightsError(f"{path}: no *.safetensors or pytorch_model*.bin weights")
    state = {}
    for file in files:
        state.update(load_state_dict_file(file))
    return hf_config, state
