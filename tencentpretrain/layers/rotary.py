"""Rotary position embedding in Meta's layout (adjacent pairs rotate together).

Checkpoints keep Meta's/TencentPretrain's q/k row order; the Hugging Face
converters permute q/k rows to and from HF's half-split layout. cos/sin are
computed per call in float32 from the position ids, so there is no buffer to
keep in sync under meta-device init or ZeRO-3 partitioning.
"""
import torch


def rotary_cos_sin(position_ids, head_dim, theta, device):
    """cos, sin of shape [batch, 1, seq, head_dim // 2] for int positions [batch, seq]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)
                                / head_dim))
    angles = position_ids.to(device=device, dtype=torch.float32)[..., None] * inv_freq
    return torch.cos(angles)[:, None], torch.sin(angles)[:, None]


def apply_rotary(x, cos, sin):
    """Rotate x [batch, heads, seq, head_dim] by the angles of its positions."""
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)
