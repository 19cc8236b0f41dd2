"""Meta's original LLaMA checkpoints (``params.json`` + ``consolidated.NN.pth``) -> ours.

Meta's q/k rows are already in our order (rotary on adjacent pairs), so converting
is renaming plus merging the model-parallel shards: 13B and larger are split across
several files, each tensor along its own dimension (the names and dimensions:
``models/layout.py``).
"""
import glob
import os

import torch

from tencentpretrain.config import config_from_dict
from tencentpretrain.models import layout
from tencentpretrain.utils.files import read_json
from tencentpretrain.utils.weights import WeightsError

def meta_feedforward_size(dim, multiple_of, ffn_dim_multiplier=None):
    """The FFN width of Meta's ``FeedForward``: 2/3 of 4*dim, scaled, rounded up."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def read_params(folder):
    path = os.path.join(folder, "params.json")
    if not os.path.isfile(path):
        raise WeightsError(f"{folder}: no params.json; expected a Meta LLaMA checkpoint folder")
    params = read_json(path, WeightsError, expect=dict)
    for key in ("dim", "n_layers", "n_heads", "norm_eps", "multiple_of"):
        if key not in params:
            raise WeightsError(f'{path}: missing "{key}"')
    return params


def config_from_meta(params, max_seq_length=2048):
    """Our config (a plain dict, every key explicit) from Meta's ``params.json``."""
    dim = params["dim"]
    return {
        "emb_size": dim, "hidden_size": dim,
        "feedforward_size": meta_feedforward_size(dim, params["multiple_of"],
                                                  params.get("ffn_dim_multiplier")),
        "heads_num": params["n_heads"], "layers_num": params["n_layers"],
        "local_kv_heads_num": params.get("n_kv_heads") or params["n_heads"],
        "max_seq_length": params.get("max_seq_len", max_seq_length),
        "embedding": ["word"], "remove_embedding_layernorm": True, "encoder": "transformer",
        "mask": "causal", "layernorm_positioning": "pre", "feed_forward": "gated",
        "remove_transformer_bias": True, "rotary_position_embedding": True,
        "layernorm": "rms", "hidden_act": "silu", "dropout": 0.0, "target": ["lm"],
        "layernorm_eps": params["norm_eps"], "rope_theta": float(params.get("rope_theta", 10000.0)),
        "tie_weights": False,
        "rope_scaling": _meta_rope_scaling(params),
    }


def _meta_rope_scaling(params):
    """LLaMA-3.1+ ``use_scaled_rope``: Meta's reference code fixes the llama3 constants
    (factor 8 unless ``rope_scaling_factor`` says otherwise, original context 8192)."""
    if not params.get("use_scaled_rope"):
        return None
    return {"rope_type": "llama3", "factor": float(params.get("rope_scaling_factor", 8.0)),
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}


def merge_meta_shards(shards):
    """Our state dict from Meta's model-parallel shards (state dicts, in file order)."""
    state = {}
    for meta_name in shards[0]:
        if meta_name in layout.META_IGNORED:
            continue
        name, dim = layout.from_meta_name(meta_name)
        missing = [i for i, shard in enumerate(shards) if meta_name not in shard]
        if missing:
            raise WeightsError(f"Meta shard {missing[0]} has no tensor {meta_name}")
        parts = [shard[meta_name] for shard in shards]
        state[name] = parts[0] if dim is None or len(parts) == 1 else torch.cat(parts, dim=dim)
    return state


def load_meta_checkpoint(folder, max_seq_length=2048):
    """(config dict, our state dict) of a Meta LLaMA folder; vocab from the weights."""
    params = read_params(folder)
    paths = sorted(glob.glob(os.path.join(folder, "consolidated.*.pth")))
    if not paths:
        raise WeightsError(f"{folder}: no consolidated.NN.pth weights")
    shards = []
    for path in paths:
        try:
            shards.append(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        except Exception as e:  # noqa: BLE001 - torch raises several kinds
            raise WeightsError(f"{path}: not a weights file ({str(e).splitlines()[0]})") from None
    config = config_from_meta(params, max_seq_length)
    state = merge_meta_shards(shards)
    vocab = params.get("vocab_size", -1)
    embedding = state.get(layout.EMBEDDING)
    if embedding is None:
        raise WeightsError(f"{folder}: no tok_embeddings.weight")
    if vocab > 0 and embedding.shape[0] != vocab:
        raise WeightsError(f"{folder}: params.json says vocab_size {vocab}, tok_embeddings.weight "
                           f"has {embedding.shape[0]} rows")
    gate = state.get(layout.layer_name(0, f"{layout.LINEARS['gate']}.weight"))
    if gate is not None and gate.shape[0] != config["feedforward_size"]:
        raise WeightsError(f"{folder}: feed_forward.w1 has {gate.shape[0]} rows, params.json "
                           f"gives a feedforward size of {config['feedforward_size']}")
    config_from_dict(config, source=os.path.join(folder, "params.json"))  # validates
    return config, state
