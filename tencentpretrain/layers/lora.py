"""LoRA (Hu et al., 2021): a frozen linear layer W plus a trained low-rank update,
y = W x + (alpha / r) * B A dropout(x), with A [r, in] and B [out, r].

Adapters are injected into a built model the way PEFT does it: each targeted
``nn.Linear`` is replaced by a ``LoraLinear`` that adopts its ``weight``/``bias``
Parameters, so the base files (attention, feed-forward) stay unchanged and base
tensor names are unchanged; the adapter tensors sit beside them
(``...linear_layers.0.lora_A``). B starts at zero, so an injected model computes
exactly what the base model computes.
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tencentpretrain.config import ConfigError
from tencentpretrain.models import layout
from tencentpretrain.utils.weights import WeightsError

# Target name -> the linear layer inside each layer; whole modules trained alongside the
# adapters (e.g. after a vocabulary extension) -> their path. Both are the layout's names.
TARGETS = layout.LINEARS
MODULES_TO_SAVE = layout.WHOLE_MODULES
# Encoder-decoder configs (T5): the decoder layers' cross-attention linears, opt-in targets
# (cross_q, cross_k, cross_v, cross_o); q, k, v, o, gate, up, down apply to the self-attention
# and feed-forward of encoder and decoder layers alike.
CROSS_TARGETS = {f"cross_{short}": path for short, path in layout.CROSS_LINEARS.items()}
KNOWN_TARGETS = {**TARGETS, **CROSS_TARGETS}


# keys an adapter's JSON holds beside the LoraConfig (the base it was trained on, adapters.py)
_BASE_KEYS = ("base_model", "base_fingerprint")


@dataclass
class LoraConfig:
    """What an adapter is: recorded beside every saved adapter."""
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple = tuple(TARGETS)
    modules_to_save: tuple = ()

    @property
    def scaling(self):
        return self.alpha / self.r

    def check(self, label=lambda field: field):
        """One ConfigError line per problem; ``label(field)`` names where the value came
        from (an option such as ``--lora_r`` or a file)."""
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"{label('r')} must be a positive integer, got {self.r!r}")
        if not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ConfigError(f"{label('alpha')} must be positive, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"{label('dropout')} must be in [0, 1), got {self.dropout!r}")
        for field, names, known in [("targets", self.targets, KNOWN_TARGETS),
                                    ("modules_to_save", self.modules_to_save, MODULES_TO_SAVE)]:
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ConfigError(f"{label(field)}: unknown name {unknown[0]!r}; known: "
                                  f"{', '.join(known)}")
        if not self.targets:
            raise ConfigError(f"{label('targets')}: at least one target is needed")
        return self

    def to_dict(self):
        return {**asdict(self), "targets": list(self.targets),
                "modules_to_save": list(self.modules_to_save)}

    @classmethod
    def from_dict(cls, raw, source):
        known = {"r", "alpha", "dropout", "targets", "modules_to_save"}
        if not isinstance(raw, dict) or not {"r", "alpha", "targets"} <= raw.keys():
            raise ConfigError(f"{source}: not a LoRA adapter config (needs r, alpha, targets)")
        raw = {k: v for k, v in raw.items() if k not in _BASE_KEYS}  # adapters.py's, not ours
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key {unknown[0]!r}; known: "
                              f"{', '.join(sorted(known))}")
        config = cls(**{**raw, "targets": tuple(raw["targets"]),
                        "modules_to_save": tuple(raw.get("modules_to_save", ()))})
        return config.check(lambda field: f"{source}: {field}")


def parse_names(text):
    """'q,k, v' -> ('q', 'k', 'v'); '' -> ()."""
    return tuple(name.strip() for name in (text or "").split(",") if name.strip())


def lora_delta(lora_A, lora_B, scaling):
    """The update the adapter adds to W, (alpha / r) * B A, in fp32."""
    return scaling * (lora_B.float() @ lora_A.float())


class LoraLinear(nn.Module):
    """A linear layer with a frozen base weight and a trainable fp32 low-rank update."""

    def __init__(self, base, r, alpha, dropout):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # the same Parameter (already partitioned under ZeRO-3)
        self.bias = base.bias
        fp32 = {"device": base.weight.device, "dtype": torch.float32}  # whatever the base's
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **fp32))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **fp32))
        if base.weight.device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's (and nn.Linear's)
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x):
        out = F.linear(x, self.weight, self.bias)
        update = F.linear(F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A),
                          self.lora_B)
        return out + (self.scaling * update).to(out.dtype)


def _submodule(root, path):
    parent_path, _, attr = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    return parent, attr


def target_paths(model, config):
    """{our module path: target name} of every linear ``config`` targets in ``model``;
    a target the model does not have (gate in a dense feed-forward) is a ConfigError."""
    paths = {}
    if not getattr(model, "decoder", None) and any(t in CROSS_TARGETS for t in config.targets):
        raise ConfigError(f"LoRA targets {', '.join(CROSS_TARGETS)} are the cross-attention of "
                          f"a decoder; {model.config.source} names no decoder")
    decoder_layers = ({id(layer) for layer in model.decoder.layers()}
                      if getattr(model, "decoder", None) else set())
    for layer_path, layer in layout.named_layers(model):
        for target in config.targets:
            if target in CROSS_TARGETS and id(layer) not in decoder_layers:
                continue  # cross-attention: decoder layers only
            parent, attr = _submodule(layer, KNOWN_TARGETS[target])
            module = getattr(parent, attr, None)
            if not isinstance(module, (nn.Linear, LoraLinear)):
                raise ConfigError(f"LoRA target {target!r} ({KNOWN_TARGETS[target]}) is not a "
                                  f"linear layer of {model.config.source} (feed_forward "
                                  f"{model.config.feed_forward!r})")
            paths[f"{layer_path}.{KNOWN_TARGETS[target]}"] = target
    return paths


def inject_lora(model, config):
    """Freeze every base parameter, put adapters on the targets, unfreeze modules_to_save.
    Under ZeRO-3 call it inside ``deepspeed.zero.Init`` so the adapters are partitioned."""
    config.check()
    paths = target_paths(model, config)
    for param in model.parameters():
        param.requires_grad_(False)
    for path in paths:
        parent, attr = _submodule(model, path)
        setattr(parent, attr, LoraLinear(getattr(parent, attr), config.r, config.alpha,
                                         config.dropout))
    for name in config.modules_to_save:
        model.get_submodule(MODULES_TO_SAVE[name]).weight.requires_grad_(True)
    model.lora_config = config
    return model


def adapter_names(model):
    """Names of the tensors an adapter file holds: the trainable ones (tied weights once)."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def check_adapter_state(model, shapes, path):
    """``shapes``: {name: shape} of an adapter file, against a LoRA-injected model (not
    partitioned); names the first missing/unexpected/mismatched tensor, with both shapes."""
    expected = {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}
    for name, shape in expected.items():
        if name not in shapes:
            raise WeightsError(f"{path}: missing adapter tensor {name}")
        if tuple(shapes[name]) != shape:
            raise WeightsError(f"{path}: adapter tensor {name} has shape {tuple(shapes[name])}, "
                               f"the model ({model.config.source}) needs {shape}")
    for name in shapes:
        if name not in expected:
            raise WeightsError(f"{path}: unexpected adapter tensor {name} for LoRA targets "
                               f"{','.join(model.lora_config.targets)} and modules_to_save "
                               f"{','.join(model.lora_config.modules_to_save) or '(none)'}")


def merge_into_state_dict(state, adapter_state, config, model_config):
    """The merged weights from a base state dict and an adapter (ours), tensor by tensor,
    without building the model: W + delta in fp32, stored in W's dtype."""
    merged = dict(state)
    layers = [(layout.layer_name(i), False) for i in range(model_config.layers_num)]
    if model_config.decoder:
        layers += [(layout.decoder_layer_name(i), True) for i in range(model_config.decoder_layers)]
    for layer, is_decoder in layers:
        for target in config.targets:
            if target in CROSS_TARGETS and not is_decoder:
                continue
            prefix = f"{layer}.{KNOWN_TARGETS[target]}"
            weight = state[f"{prefix}.weight"]
            delta = lora_delta(adapter_state[f"{prefix}.lora_A"],
                               adapter_state[f"{prefix}.lora_B"], config.scaling)
            merged[f"{prefix}.weight"] = (weight.float() + delta).to(weight.dtype)
    for name in config.modules_to_save:
        key = f"{MODULES_TO_SAVE[name]}.weight"
        if key in adapter_state:
            merged[key] = adapter_state[key].to(state[key].dtype)
    return merged


def keep_grad_through_checkpoints(model):
    """Reentrant activation checkpointing (DeepSpeed's) gives no gradient to the weights
    inside a checkpoint whose input needs none, which a frozen embedding's output does not:
    mark that output as needing one (transformers' ``enable_input_require_grads``)."""
    def require_grad(module, inputs, output):
        return output.requires_grad_(True) if not output.requires_grad else output
    return layout.embedding(model).register_forward_hook(require_grad)
