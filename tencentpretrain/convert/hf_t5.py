"""Hugging Face T5 checkpoints (``T5ForConditionalGeneration``: T5, T5 v1.1, Flan-T5) <->
ours, both ways. Tensor names are ``models/layout.py``'s (``T5HFLayout``).

Original T5 (``feed_forward_proj`` "relu") ties the output layer to the embedding and
scales the decoder output by ``d_model ** -0.5``; v1.1 / Flan-T5 ("gated-gelu") has its
own ``lm_head`` and no rescale. Anything our model would not reproduce is refused in one
line. transformers >= 5 always ties T5's ``lm_head`` in memory and keeps the rescale
choice as ``scale_decoder_outputs``; a ``config.json`` still says ``tie_word_embeddings``.
"""
from tencentpretrain.config import ConfigError, ModelConfig, config_from_dict
from tencentpretrain.models import layout

# feed_forward_proj -> (our feed_forward, our hidden_act)
FEED_FORWARD = {"relu": ("dense", "relu"), "gated-gelu": ("gated", "gelu_fast"),
                "gated-gelu_new": ("gated", "gelu_fast"), "gated-relu": ("gated", "relu"),
                "gated-silu": ("gated", "silu")}
_HF_FEED_FORWARD = {("dense", "relu"): "relu", ("gated", "gelu_fast"): "gated-gelu",
                    ("gated", "relu"): "gated-relu", ("gated", "silu"): "gated-silu"}


def is_t5(hf_config):
    return hf_config.get("model_type") == "t5" or "T5ForConditionalGeneration" in (
        hf_config.get("architectures") or [])


def config_from_hf(hf, source="Hugging Face config.json"):
    """Our ModelConfig from a T5 ``config.json`` dict; another model's is refused naming its
    converter."""
    if not is_t5(hf):
        raise ConfigError(f"{source}: not a T5 config (model_type {hf.get('model_type')!r}); "
                          "LLaMA-family folders convert with "
                          "scripts/convert_llama_from_huggingface_to_tencentpretrain.py")
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in FEED_FORWARD:
        raise ConfigError(f"{source}: feed_forward_proj {proj!r} is not supported; supported: "
                          f"{', '.join(FEED_FORWARD)}")
    gated = proj.startswith("gated-")
    if "is_gated_act" in hf and bool(hf["is_gated_act"]) != gated:
        raise ConfigError(f"{source}: is_gated_act {hf['is_gated_act']} contradicts "
                          f"feed_forward_proj {proj!r}")
    if hf.get("is_decoder") or not hf.get("is_encoder_decoder", True):
        raise ConfigError(f"{source}: only encoder-decoder T5 (T5ForConditionalGeneration) "
                          "converts")
    feed_forward, act = FEED_FORWARD[proj]
    heads, d_kv, d_model = hf["num_heads"], hf["d_kv"], hf["d_model"]
    # transformers >= 5 writes tie_word_embeddings true for every T5 and keeps the choice
    # (tied output layer with the d_model ** -0.5 rescale, or an own lm_head) here
    tied = (bool(hf["scale_decoder_outputs"]) if "scale_decoder_outputs" in hf
            else hf.get("tie_word_embeddings", True) is not False)
    raw = {
        "emb_size": d_model, "hidden_size": d_model, "feedforward_size": hf["d_ff"],
        "heads_num": heads, "layers_num": hf["num_layers"],
        "decoder_layers_num": hf.get("num_decoder_layers") or hf["num_layers"],
        "max_seq_length": hf.get("n_positions") or 512,
        "embedding": ["word"], "encoder": "transformer", "mask": "fully_visible",
        "decoder": "transformer", "target": ["lm"], "feed_forward": feed_forward,
        "hidden_act": act, "layernorm": "rms", "layernorm_positioning": "pre",
        "layernorm_eps": hf.get("layer_norm_epsilon", 1e-6), "remove_transformer_bias": True,
        "remove_embedding_layernorm": True, "rotary_position_embedding": False,
        "relative_position_embedding": True,
        "relative_attention_buckets_num": hf.get("relative_attention_num_buckets", 32),
        "relative_attention_max_distance": hf.get("relative_attention_max_distance", 128),
        "remove_attention_scale": True, "tie_weights": tied,
        "dropout": hf.get("dropout_rate", 0.1), "attention_head_size": d_kv,
    }
    return config_from_dict(raw, source=source)


def config_to_hf(config: ModelConfig, vocab_size, pad_id=0, eos_id=1, dtype="float32"):
    """A T5 ``config.json`` dict for ``config``."""
    proj = _HF_FEED_FORWARD.get((config.feed_forward, config.hidden_act))
    if proj is None or not config.relative_position_embedding or not config.remove_attention_scale:
        raise ConfigError(f"{config.source}: not a T5 shape (feed_forward {config.feed_forward}, "
                          f"hidden_act {config.hidden_act}, relative position bias and no "
                          "attention scale are what T5ForConditionalGeneration reproduces)")
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
        "d_model": config.hidden_size, "d_kv": config.head_dim, "d_ff": config.feedforward_size,
        "num_heads": config.heads_num, "num_layers": config.layers_num,
        "num_decoder_layers": config.decoder_layers,
        "relative_attention_num_buckets": config.relative_attention_buckets_num,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout, "layer_norm_epsilon": config.layernorm_eps,
        "initializer_factor": 1.0, "feed_forward_proj": proj,
        "is_gated_act": proj.startswith("gated-"),
        "dense_act_fn": {"gelu_fast": "gelu_new"}.get(config.hidden_act, config.hidden_act),
        "is_encoder_decoder": True, "use_cache": True, "tie_word_embeddings": config.tie_weights,
        "vocab_size": vocab_size, "pad_token_id": pad_id, "eos_token_id": eos_id,
        "decoder_start_token_id": pad_id, "n_positions": config.max_seq_length,
        "torch_dtype": dtype,
    }


def hf_to_tencentpretrain(hf_state, config, source="Hugging Face checkpoint"):
    return layout.from_hf(hf_state, config, source)


def tencentpretrain_to_hf(state, config):
    return layout.to_hf(state, config)
