"""Weight files: plain state dicts only, never arbitrary pickled objects.

``.bin``/``.pt`` files load with ``torch.load(weights_only=True)``; ``.safetensors``
with safetensors. Saving writes beside the target and renames, so a save killed
halfway never leaves a file that loads.
"""
import os

import torch

from tencentpretrain.errors import UserError
from tencentpretrain.utils.files import atomic_path


class WeightsError(UserError):
    """A weights file that is missing, unreadable or does not fit the model."""


def load_state_dict_file(path, tensors_only=True):
    """A state dict from ``path``: tensors only for weights; ``tensors_only=False`` also
    admits the plain containers and numbers of optimizer states (still no pickled code)."""
    if not os.path.exists(path):
        raise WeightsError(f"{path}: no such file")
    if os.path.isdir(path):
        raise WeightsError(f"{path} is a directory, expected a .bin or .safetensors weights file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except Exception as e:  # noqa: BLE001 - safetensors raises several kinds
            raise WeightsError(f"{path}: not a safetensors file ({e})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - retry without mmap (old non-zip format)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            if "Unsupported global" in str(e):  # a pickled object, not just tensors
                raise WeightsError(f"{path}: a pickle that needs code execution to load; only "
                                   "plain state dicts of tensors are read") from None
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WeightsError(f"{path}: not a weights file ({first})") from None
    if isinstance(state, dict) and "module" in state and isinstance(state["module"], dict):
        state = state["module"]  # DeepSpeed model-states files
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not a state dict")
    if tensors_only and not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return state


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
