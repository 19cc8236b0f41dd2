"""Model configs: TencentPretrain's JSON keys, checked before any weight is allocated.

A config describes shapes and module choices only. The vocabulary size is not a
config key: it comes from the tokenizer or from the checkpoint.
"""
import json
import os
from dataclasses import dataclass, field, fields

from tencentpretrain.errors import UserError
from tencentpretrain.utils.files import read_json


class ConfigError(UserError):
    """A model config that cannot be built; the message is one line naming the file."""


@dataclass
class ModelConfig:
    emb_size: int
    hidden_size: int
    feedforward_size: int
    heads_num: int
    layers_num: int
    max_seq_length: int
    embedding: list = field(default_factory=lambda: ["word"])
    encoder: str = "transformer"
    decoder: str = None
    target: list = field(default_factory=lambda: ["lm"])
    mask: str = "causal"
    feed_forward: str = "gated"
    layernorm: str = "rms"
    layernorm_positioning: str = "pre"
    hidden_act: str = "silu"
    dropout: float = 0.0
    remove_transformer_bias: bool = True
    remove_embedding_layernorm: bool = True
    rotary_position_embedding: bool = True
    local_kv_heads_num: int = None
    rope_theta: float = 10000.0
    layernorm_eps: float = 1e-6
    tie_weights: bool = False
    qkv_bias: bool = False  # biases on q/k/v only (Qwen2), whatever remove_transformer_bias says
    rope_scaling: dict = None  # {"rope_type": "linear" | "llama3", "factor": ..., ...}
    sliding_window: int = None  # attend to at most this many most recent positions (Mistral)
    # encoder-decoder (T5, docs/encoder_decoder.md); saved configs carry these only when set (T5_KEYS)
    decoder_layers_num: int = None  # decoder layers (default: layers_num)
    attention_head_size: int = None  # per head (default: hidden_size / heads_num)
    remove_attention_scale: bool = False  # no 1/sqrt(head size) on the scores (T5)
    relative_position_embedding: bool = False  # T5's relative position bias, bucketed
    relative_attention_buckets_num: int = 32
    relative_attention_max_distance: int = 128
    source: str = "<dict>"  # where the config came from, for error messages

    @property
    def kv_heads_num(self):
        return self.local_kv_heads_num or self.heads_num

    @property
    def head_dim(self):
        return self.attention_head_size or self.hidden_size // self.heads_num

    @property
    def decoder_layers(self):
        return self.decoder_layers_num or self.layers_num


# Keys TencentPretrain configs carry that do not change the model we build.
_IGNORED_KEYS = {"tgt_embedding", "tgt_vocab_size", "parameters_sharing",
                 "has_residual_attention", "share_embedding", "is_moe", "use_alibi"}
_BOOL_KEYS = {"remove_transformer_bias", "remove_embedding_layernorm",
              "rotary_position_embedding", "tie_weights", "qkv_bias", "remove_attention_scale",
              "relative_position_embedding"}
_INT_KEYS = {"emb_size", "hidden_size", "feedforward_size", "heads_num", "layers_num",
             "max_seq_length", "local_kv_heads_num", "sliding_window", "decoder_layers_num",
             "attention_head_size", "relative_attention_buckets_num",
             "relative_attention_max_distance"}
_FLOAT_KEYS = {"dropout", "rope_theta", "layernorm_eps"}
_STR_KEYS = {"encoder", "decoder", "mask", "feed_forward", "layernorm",
             "layernorm_positioning", "hidden_act"}
_LIST_KEYS = {"embedding", "target"}
_OPTIONAL_KEYS = {"local_kv_heads_num", "sliding_window", "rope_scaling", "decoder_layers_num",
                  "attention_head_size"}
# Encoder-decoder keys: written by save_config only when they differ from the default, so a
# decoder-only config saves exactly as before they existed.
T5_KEYS = {"decoder_layers_num", "attention_head_size", "remove_attention_scale",
           "relative_position_embedding", "relative_attention_buckets_num",
           "relative_attention_max_distance"}
# Required numbers of each RoPE scaling type (the names Hugging Face configs use).
ROPE_SCALING_KEYS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def _check_rope_scaling(value, source):
    """Normalise a rope_scaling object (``"type"`` is the older spelling of ``"rope_type"``)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f'"rope_scaling" in {source} must be an object or null, got {value!r}')
    value = dict(value)
    legacy_type = value.pop("type", None)
    rope_type = value.setdefault("rope_type", legacy_type)
    if rope_type not in ROPE_SCALING_KEYS:
        raise ConfigError(f'"rope_scaling" in {source}: rope_type {rope_type!r} is not supported; '
                          f"supported: {', '.join(ROPE_SCALING_KEYS)}")
    for key in ROPE_SCALING_KEYS[rope_type]:
        number = value.get(key)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or number <= 0:
            raise ConfigError(f'"rope_scaling" in {source}: {rope_type} scaling needs a positive '
                              f'number "{key}", got {number!r}')
    unknown = set(value) - {"rope_type", *ROPE_SCALING_KEYS[rope_type]}
    if unknown:
        raise ConfigError(f'"rope_scaling" in {source}: unknown key "{sorted(unknown)[0]}" for '
                          f"{rope_type} scaling")
    if rope_type == "llama3" and value["high_freq_factor"] <= value["low_freq_factor"]:
        raise ConfigError(f'"rope_scaling" in {source}: "high_freq_factor" must exceed '
                          '"low_freq_factor"')
    return value


def _check_type(key, value, source):
    def bad(expected):
        raise ConfigError(f'"{key}" in {source} must be {expected}, got {value!r}')

    if key in _BOOL_KEYS and not isinstance(value, bool):
        bad("true or false")
    if key in _INT_KEYS and (isinstance(value, bool) or not isinstance(value, int)):
        if not (key in _OPTIONAL_KEYS and value is None):
            bad("an integer")
    if key in _FLOAT_KEYS and (isinstance(value, bool) or not isinstance(value, (int, float))):
        bad("a number")
    if key in _STR_KEYS and not isinstance(value, str):
        if not (key == "decoder" and value is None):
            bad("a string")
    if key == "rope_scaling":
        return _check_rope_scaling(value, source)
    if key in _LIST_KEYS:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            bad("a list of strings")
    if key in _INT_KEYS and value is not None and value <= 0:
        bad("a positive integer")
    return value


def config_from_dict(raw, source="<dict>"):
    known = {f.name for f in fields(ModelConfig)} - {"source"}
    required = ["emb_size", "hidden_size", "feedforward_size", "heads_num", "layers_num",
                "max_seq_length"]
    for key in required:
        if key not in raw:
            raise ConfigError(f'missing required key "{key}" in {source}')
    values = {}
    for key, value in raw.items():
        if key in _IGNORED_KEYS:
            continue
        if key == "vocab_size":
            raise ConfigError(f'"vocab_size" in {source}: remove it; the vocabulary size comes '
                              "from the tokenizer (--spm_model_path) or the checkpoint, never "
                              "from the model config")
        if key not in known:
            raise ConfigError(f'unknown key "{key}" in {source}; known: {", ".join(sorted(known))}')
        values[key] = _check_type(key, value, source)
    cfg = ModelConfig(source=source, **values)
    if cfg.decoder and raw.get("share_embedding", True) is not True:
        raise ConfigError(f'"share_embedding" {raw["share_embedding"]!r} in {source}: the decoder '
                          "embeds its input with the encoder's embedding (T5's shared); a "
                          'separate target embedding is not supported (use "share_embedding": true)')
    if cfg.hidden_size % cfg.heads_num and not cfg.attention_head_size:
        raise ConfigError(f'"hidden_size" {cfg.hidden_size} is not divisible by "heads_num" '
                          f"{cfg.heads_num} in {source}")
    if cfg.heads_num % cfg.kv_heads_num:
        raise ConfigError(f'"heads_num" {cfg.heads_num} is not divisible by "local_kv_heads_num" '
                          f"{cfg.kv_heads_num} in {source}")
    if cfg.emb_size != cfg.hidden_size:
        raise ConfigError(f'"emb_size" {cfg.emb_size} must equal "hidden_size" {cfg.hidden_size} '
                          f"in {source}")
    if cfg.rotary_position_embedding and cfg.head_dim % 2:
        raise ConfigError(f"rotary position embedding needs an even head size, got "
                          f"{cfg.head_dim} in {source}")
    if cfg.rope_scaling and not cfg.rotary_position_embedding:
        raise ConfigError(f'"rope_scaling" in {source} needs "rotary_position_embedding": true')
    return cfg


def load_config(path):
    """Read and validate a JSON model config; every problem is one ConfigError line."""
    if not os.path.isfile(path):
        raise ConfigError(f"--config_path {path}: no such file")
    return config_from_dict(read_json(path, ConfigError, expect=dict), source=path)


def save_config(config, path):
    """Write a ModelConfig (or a plain dict of config keys) as a JSON model config."""
    if isinstance(config, ModelConfig):
        config = {f.name: getattr(config, f.name) for f in fields(ModelConfig)
                  if f.name != "source"
                  and not (f.name in T5_KEYS and getattr(config, f.name) == f.default)}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
