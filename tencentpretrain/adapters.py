"""LoRA adapter files: ours (``NAME.safetensors`` holding only the adapter and
modules_to_save tensors, ``NAME.json`` beside it with r, alpha, dropout and targets, and the
fingerprint of the base it was trained on) and Hugging Face PEFT folders (recognised by
their ``adapter_config.json``; they carry no fingerprint)."""
import hashlib
import json
import os
import sys

import torch

from tencentpretrain.config import ConfigError
from tencentpretrain.convert.peft_lora import PEFT_CONFIG, read_peft_dir
from tencentpretrain.layers.lora import MODULES_TO_SAVE, LoraConfig, check_adapter_state, inject_lora
from tencentpretrain.model_builder import build_model
from tencentpretrain.models.layout import OUTPUT
from tencentpretrain.utils.files import read_json
from tencentpretrain.utils.weights import WeightsError, load_state_dict_file, save_state_dict_file

SUFFIX = ".safetensors"


def _first_rows(weights):
    """{name: shape} and a function giving a tensor's first row (all of a vector) without
    reading the rest: ``weights`` is a LazyWeights, a state dict or a model."""
    if isinstance(weights, torch.nn.Module):
        weights = weights.state_dict()
    if isinstance(weights, dict):
        shapes = {name: tuple(t.shape) for name, t in weights.items()}
        return shapes, lambda name: weights[name]
    sliced = getattr(weights, "_file", None)  # safetensors: read only the slice
    if sliced is not None:
        return dict(weights.shapes), lambda name: sliced.get_slice(name)[0:1] if len(
            weights.shapes[name]) >= 2 else sliced.get_tensor(name)
    return dict(weights.shapes), weights.__getitem__  # torch zip, memory-mapped


def base_fingerprint(weights, tie_weights=False):
    """A short identity of base weights (a file opened as LazyWeights, a state dict or a
    model): sha256 over every tensor's name and shape and the first row of each, in bf16.
    Cheap (a few MB of a 7B model are read), the same on every rank and backend, and the
    same for a file and its bf16 copy; another base, or the base with an adapter merged
    in, differs. A tied output layer is left out (files may or may not hold it)."""
    shapes, first = _first_rows(weights)
    digest = hashlib.sha256()
    for name in sorted(shapes):
        if tie_weights and name == OUTPUT:
            continue
        tensor = first(name).detach()
        row = tensor.reshape(-1) if tensor.dim() < 2 else tensor.reshape(tensor.shape[0], -1)[0]
        digest.update(f"{name}{list(shapes[name])}".encode())
        row = row.to("cpu", torch.bfloat16).contiguous()
        digest.update(row.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def short(fingerprint):
    return fingerprint[:12]


def base_record(path, fingerprint):
    """The keys NAME.json records about the base (none when it was not a file)."""
    return {"base_model": path, "base_fingerprint": fingerprint} if fingerprint else {}


def adapter_files(path):
    """(weights file, settings file) of our adapter named ``path`` (with or without .safetensors)."""
    stem = path.removesuffix(SUFFIX)
    return stem + SUFFIX, stem + ".json"


def save_adapter(path, lora_config, state, base=None):
    """Settings first, weights last (atomically): a file that loads always has its settings.
    ``base``: ``base_record`` of the base it was trained on, recorded in NAME.json."""
    weights, settings = adapter_files(path)
    os.makedirs(os.path.dirname(os.path.abspath(weights)), exist_ok=True)
    with open(settings, "w", encoding="utf-8") as f:
        json.dump({**lora_config.to_dict(), **(base or {})}, f, indent=2)
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


def adapter_base(path):
    """(base path, base fingerprint) an adapter of ours recorded, or None (a PEFT folder,
    or saved before adapters recorded their base, or trained on a random base)."""
    if os.path.isdir(path):
        return None
    settings = adapter_files(path)[1]
    raw = read_json(settings, ConfigError, expect=dict) if os.path.isfile(settings) else {}
    fingerprint = raw.get("base_fingerprint")
    return (raw.get("base_model"), fingerprint) if isinstance(fingerprint, str) else None


def other_base(path, fingerprint, base_label):
    """One line when the adapter at ``path`` records a base whose fingerprint is not
    ``fingerprint`` (of ``base_label``), else None."""
    recorded = adapter_base(path)
    if recorded is None or recorded[1] == fingerprint:
        return None
    return (f"adapter {path} was trained on base {recorded[0]} (fingerprint "
            f"{short(recorded[1])}), not on {base_label} (fingerprint {short(fingerprint)}: "
            "another base, or the base with an adapter already merged in)")


def load_adapter(model, path):
    """Inject the adapter at ``path`` into ``model`` (a plain, unpartitioned one) and load it.
    An adapter recorded as trained on another base loads with a ``warning:`` line on stderr
    (its output is not what it was trained to give)."""
    lora_config, state = read_adapter(path, model.config)
    if adapter_base(path) is not None:
        line = other_base(path, base_fingerprint(model, model.config.tie_weights), "this base")
        if line:
            print(f"warning: {line}; its outputs will not be the trained ones", file=sys.stderr)
    inject_lora(model, lora_config)
    check_adapter_state(model, {name: t.shape for name, t in state.items()}, path)
    params = dict(model.named_parameters())
    for name, tensor in state.items():
        params[name].data.copy_(tensor)
    return model


def check_adapter(model_config, lora_config, state, path, vocab_size=None):
    """Shapes of an adapter against a config, on the meta device (nothing allocated).
    Without ``vocab_size`` it comes from the adapter's modules_to_save tensors, if any."""
    if vocab_size is None:
        rows = [state[f"{MODULES_TO_SAVE[m]}.weight"].shape[0] for m in lora_config.modules_to_save
                if f"{MODULES_TO_SAVE[m]}.weight" in state]
        vocab_size = int(rows[0]) if rows else 1
    model = inject_lora(build_model(model_config, vocab_size, device="meta"), lora_config)
    check_adapter_state(model, {name: t.shape for name, t in state.items()}, path)
