"""Weight files: plain state dicts only, never arbitrary pickled objects.

``.bin``/``.pt`` files load with ``torch.load(weights_only=True)``; ``.safetensors``
with safetensors. Saving writes beside the target and renames, so a save killed
halfway never leaves a file that loads.
"""
import contextlib
import os
import re

import torch

from tencentpretrain.errors import UserError
from tencentpretrain.utils.files import atomic_path


class WeightsError(UserError):
    """A weights file that is missing, unreadable or does not fit the model."""


def load_state_dict_file(path, tensors_only=True):
    """A state dict from ``path``: tensors only for weights; ``tensors_only=False`` also
    admits the plain containers and numbers of optimizer states (still no pickled code)."""
    _check_exists(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        with _safetensors_errors(path):
            return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - retry without mmap (old non-zip format)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise WeightsError(_unreadable(path, e, tensors_only)) from None
    if isinstance(state, dict) and "module" in state and isinstance(state["module"], dict):
        state = state["module"]  # DeepSpeed model-states files
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not a state dict")
    if tensors_only and not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return state


def _unreadable(path, error, tensors_only):
    """One line of our own for a file torch.load(weights_only=True) refused: what the file
    is, and whether it holds pickled code or is truncated/corrupt (torch's own message is a
    paragraph about its defaults)."""
    kind = "weights file" if tensors_only else "training-state file"
    message = str(error)
    if "Weights only load failed" in message and re.search(r"global|reduce", message, re.I):
        # pickled objects: loading them would import and call code
        if tensors_only:
            return (f"{path}: a pickle that needs code execution to load; only plain state "
                    "dicts of tensors are read")
        found = re.search(r"GLOBAL (\S+)", message)
        what = f" ({found.group(1)})" if found else ""
        return (f"{path}: a pickle that needs code execution to load{what}; a {kind} may hold "
                "only tensors, numbers and containers, all that torch.load(weights_only=True) reads")
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    if zipped or isinstance(error, EOFError) or "truncated" in message or \
            "Ran out of input" in message or os.path.getsize(path) == 0:
        form = "torch zip archive" if zipped else "torch pickle"
        return (f"{path}: truncated or corrupt {kind} (an incomplete {form}, e.g. a save or "
                "copy that did not finish); use another copy or checkpoint")
    return f"{path}: not a {kind} (neither a torch zip archive nor a torch pickle)"


def _check_exists(path):
    if not os.path.exists(path):
        raise WeightsError(f"{path}: no such file")
    if os.path.isdir(path):
        raise WeightsError(f"{path} is a directory, expected a .bin or .safetensors weights file")


@contextlib.contextmanager
def _safetensors_errors(path):
    try:
        yield
    except Exception as e:  # noqa: BLE001 - safetensors raises several kinds
        raise WeightsError(f"{path}: not a safetensors file ({e})") from None


class LazyWeights:
    """A weights file read one tensor at a time: torch zip files are memory-mapped,
    safetensors opened lazily, so reading a 7B checkpoint never holds it all."""

    def __init__(self, path):
        self.path = path
        if path.endswith(".safetensors"):
            from safetensors import safe_open
            _check_exists(path)
            with _safetensors_errors(path):
                self._file = safe_open(path, framework="pt")
            self.shapes = {k: tuple(self._file.get_slice(k).get_shape()) for k in self._file.keys()}
            self.tensor = self._file.get_tensor
        else:
            state = load_state_dict_file(path)  # mmap: tensors are paged in when touched
            self.shapes = {k: tuple(v.shape) for k, v in state.items()}
            self.tensor = state.__getitem__

    def __getitem__(self, name):
        return self.tensor(name)

    def meta_state_dict(self):
        return {k: torch.empty(shape, device="meta") for k, shape in self.shapes.items()}



def save_state_dict_file(state_dict, path):
    """Atomically write a state dict (``.safetensors`` by extension, else torch zip)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    seen = set()
    tensors = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().cpu().contiguous()
        if tensor.data_ptr() in seen:  # tied weights: safetensors refuses shared storage
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        tensors[name] = tensor
    with atomic_path(path) as tmp:
        if path.endswith(".safetensors"):
            from safetensors.torch import save_file
            save_file(tensors, tmp, metadata={"format": "pt"})
        else:
            torch.save(tensors, tmp)
