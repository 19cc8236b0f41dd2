"""Build a model from a config, load weights into it, check both before allocating.

Adapters are not loaded here (``adapters.load_adapter`` on the returned model;
``tencentpretrain.loading`` does both), so this module imports nothing above it."""
import torch

from tencentpretrain.config import ConfigError, ModelConfig, load_config
from tencentpretrain.decoders import str2decoder
from tencentpretrain.embeddings import str2embedding
from tencentpretrain.encoders import str2encoder
from tencentpretrain.layers import LAYERNORM_POSITIONS, str2act, str2feedforward, str2layernorm
from tencentpretrain.layers.masks import str2mask
from tencentpretrain.models import layout
from tencentpretrain.models.model import Model
from tencentpretrain.targets import str2target
from tencentpretrain.utils.weights import WeightsError, load_state_dict_file

# (config key, human name, registry): every config string is looked up here first.
_REGISTRIES = [
    ("embedding", "embedding", str2embedding),
    ("encoder", "encoder", str2encoder),
    ("decoder", "decoder", str2decoder),
    ("target", "target", str2target),
    ("mask", "mask", str2mask),
    ("feed_forward", "feed_forward", str2feedforward),
    ("layernorm", "layernorm", str2layernorm),
    ("layernorm_positioning", "layernorm_positioning", LAYERNORM_POSITIONS),
    ("hidden_act", "hidden_act", str2act),
]


def check_registries(config):
    for key, kind, registry in _REGISTRIES:
        value = getattr(config, key)
        if value is None and key == "decoder":
            continue
        for name in value if isinstance(value, list) else [value]:
            if name not in registry:
                known = ", ".join(sorted(registry)) or "(none)"
                raise ConfigError(f'unknown {kind} "{name}" in {config.source}; known: {known}')
    if len(config.target) != 1:  # a second target would be built and saved, never trained
        raise ConfigError(f'"target" in {config.source} is {config.target}; the trainer trains '
                          'exactly one target (a language model: ["lm"])')


def build_model(config, vocab_size, device=None):
    """Allocate a model for ``config`` (a ModelConfig or a config path) on ``device``.

    ``device="meta"`` builds shapes only (parameter counts without memory).
    """
    if not isinstance(config, ModelConfig):
        config = load_config(config)
    check_registries(config)
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        raise ConfigError(f"vocab_size must be a positive integer, got {vocab_size!r} "
                          "(it comes from the tokenizer or the checkpoint)")
    if device is None:
        return Model(config, vocab_size)
    with torch.device(device):
        return Model(config, vocab_size)


def vocab_size_of(state_dict, path="<state dict>"):
    key = layout.EMBEDDING
    if key not in state_dict:
        raise WeightsError(f"{path}: no {key}; not a TencentPretrain LLaMA checkpoint")
    return int(state_dict[key].shape[0])


def check_state_dict(model, state_dict, path):
    """Name the first missing/unexpected/mismatched tensor, with both shapes."""
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state_dict:
            if model.config.tie_weights and name == layout.OUTPUT:
                continue
            raise WeightsError(f"{path}: missing tensor {name} (config {model.config.source})")
        if tuple(state_dict[name].shape) != tuple(tensor.shape):
            raise WeightsError(
                f"{path}: tensor {name} has shape {tuple(state_dict[name].shape)}, config "
                f"{model.config.source} expects {tuple(tensor.shape)}")
    for name in state_dict:
        if name not in expected:
            raise WeightsError(f"{path}: unexpected tensor {name} for config {model.config.source}")


def load_model(config_path, model_path=None, vocab_size=None, dtype=None, device=None):
    """Build the model of ``config_path`` and load ``model_path`` into it.

    The vocabulary size comes from the checkpoint when one is given (it may exceed the
    tokenizer's ``vocab_size`` by padding rows, never fall short), else from ``vocab_size``.
    ``device=None`` follows torch's default device (``with torch.device("meta"):``,
    ``torch.set_default_device``); on the meta device only the checkpoint's shapes
    are checked against the config and nothing is allocated.
    """
    device = torch.device(device) if device is not None else torch.get_default_device()
    config = load_config(config_path) if not isinstance(config_path, ModelConfig) else config_path
    check_registries(config)
    state_dict = None
    if model_path is not None:
        state_dict = load_state_dict_file(model_path)
        ckpt_vocab = vocab_size_of(state_dict, model_path)
        if vocab_size is not None and vocab_size > ckpt_vocab:
            raise WeightsError(f"{model_path} has a vocabulary of {ckpt_vocab} tokens, the "
                               f"tokenizer has {vocab_size}")
        vocab_size = ckpt_vocab
    if vocab_size is None:
        raise ConfigError("load_model needs model_path or vocab_size (from the tokenizer)")
    if state_dict is None:
        model = build_model(config, vocab_size, device=device)
    else:
        model = build_model(config, vocab_size, device="meta")
        check_state_dict(model, state_dict, model_path)
        if device.type == "meta":
            return model.eval()
        model = model.to_empty(device=device)
        model.load_state_dict(state_dict, strict=not config.tie_weights)
        if config.tie_weights:
            layout.tie_weights(model)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval() if model_path is not None else model


def pick_device_dtype(device="auto", dtype="auto"):
    """bf16 (else fp16) on GPU, float32 on CPU, unless asked otherwise."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        if not device.startswith("cuda"):
            dtype = "float32"
        else:
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return device, getattr(torch, dtype)
