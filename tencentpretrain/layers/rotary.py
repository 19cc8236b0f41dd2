"""Rotary position embedding in Meta's layout (adjacent pairs rotate together).

Checkpoints keep Meta's/TencentPretrain's q/k row order; the Hugging Face
converters permute q/k rows to and from HF's half-split layout. The rotations
(unit complex numbers, as in Meta's reference code: one complex multiply per
pair instead of a dozen real ops) are computed per call in float32 from the
position ids, so there is no buffer to keep in sync under meta-device init or
ZeRO-3 partitioning.

Context extension rescales the frequencies (config ``rope_scaling``), by type:
- ``linear``: every frequency divided by ``factor`` (position interpolation).
- ``llama3`` (LLaMA-3.1): wavelengths longer than the original context divided by
  ``factor``, shorter than ``original / high_freq_factor`` kept, and a smooth blend
  between; positions inside the original context barely move.
"""
import math

import torch


def _linear(inv_freq, factor):
    return inv_freq / factor


def _llama3(inv_freq, factor, low_freq_factor, high_freq_factor,
            original_max_position_embeddings):
    wavelength = 2 * math.pi / inv_freq
    long_limit = original_max_position_embeddings / low_freq_factor
    short_limit = original_max_position_embeddings / high_freq_factor
    # 0 at the long limit, 1 at the short limit: how much of the original frequency stays.
    keep = ((original_max_position_embeddings / wavelength - low_freq_factor)
            / (high_freq_factor - low_freq_factor))
    blended = (1 - keep) * inv_freq / factor + keep * inv_freq
    scaled = torch.where(wavelength > long_limit, inv_freq / factor, blended)
    return torch.where(wavelength < short_limit, inv_freq, scaled)


str2rope_scaling = {"linear": _linear, "llama3": _llama3}


def rotary_inv_freq(head_dim, theta, device, scaling=None):
    """Angle per position of each rotated pair, [head_dim // 2] float32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)
                                / head_dim))
    if scaling:
        params = {k: v for k, v in scaling.items() if k != "rope_type"}
        inv_freq = str2rope_scaling[scaling["rope_type"]](inv_freq, **params)
    return inv_freq


def rotary_rotations(position_ids, head_dim, theta, device, scaling=None):
    """cos + i sin, complex64 [batch, 1, seq, head_dim // 2], for int positions [batch, seq]."""
    inv_freq = rotary_inv_freq(head_dim, theta, device, scaling)
    angles = position_ids.to(device=device, dtype=torch.float32)[..., None] * inv_freq
    return torch.polar(torch.ones_like(angles), angles)[:, None]


def apply_rotary(x, rotations):
    """Rotate x [batch, heads, seq, head_dim] by ``rotary_rotations`` of its positions: each
    adjacent pair (even, odd) as the complex number even + i odd."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotations).flatten(-2).to(x.dtype)
