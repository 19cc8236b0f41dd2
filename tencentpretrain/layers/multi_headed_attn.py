"""Multi-head self-attention with grouped-query heads, through PyTorch SDPA.

Parameter names follow TencentPretrain (``linear_layers`` = q, k, v;
``final_linear`` = output), so its LLaMA checkpoints load unchanged. With
``local_kv_heads_num`` < ``heads_num`` the k/v projections are smaller and SDPA
broadcasts each k/v head over its query group (``enable_gqa``), no copies.
``qkv_bias`` gives q/k/v (not the output) a bias, as Qwen2 has.
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from tencentpretrain.layers.masks import DocumentSpans
from tencentpretrain.layers.rotary import apply_rotary


class MultiHeadedAttention(nn.Module):
    def __init__(self, hidden_size, heads_num, kv_heads_num, dropout, has_bias, layer_index,
                 qkv_bias=False, head_dim=None, remove_scale=False):
        super().__init__()
        self.heads_num = heads_num
        self.kv_heads_num = kv_heads_num
        self.head_dim = head_dim or hidden_size // heads_num  # T5 v1.1-small: 6 x 64 != 512
        self.layer_index = layer_index
        self.dropout = dropout
        self.scale = 1.0 if remove_scale else None  # None: SDPA's 1/sqrt(head_dim); T5: 1
        q_size, kv_size = heads_num * self.head_dim, kv_heads_num * self.head_dim
        self.linear_layers = nn.ModuleList([
            nn.Linear(hidden_size, q_size, bias=has_bias or qkv_bias),
            nn.Linear(hidden_size, kv_size, bias=has_bias or qkv_bias),
            nn.Linear(hidden_size, kv_size, bias=has_bias or qkv_bias),
        ])
        self.final_linear = nn.Linear(q_size, hidden_size, bias=has_bias)

    def memory_kv(self, memory):
        """Keys and values [batch, kv_heads, keys, head_dim] of ``memory`` (cross-attention:
        the encoder's output), computed once per source and reused at every decoding step."""
        batch, keys, _ = memory.shape
        return tuple(linear(memory).view(batch, keys, -1, self.head_dim).transpose(1, 2)
                     for linear in self.linear_layers[1:])

    def cross(self, x, memory_kv, attn_mask=None):
        """Cross-attention of x [batch, seq, hidden] over ``memory_kv``; attn_mask broadcasts
        to [batch, heads, seq, keys] (bool: True = attend, or additive float)."""
        batch, seq, _ = x.shape
        q = self.linear_layers[0](x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        k, v = memory_kv
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.kv_heads_num != self.heads_num, scale=self.scale)
        return self.final_linear(out.transpose(1, 2).reshape(batch, seq, -1))

    def forward(self, x, rotary=None, attn_mask=None, is_causal=False, kv_cache=None):
        """x: [batch, seq, hidden]; attn_mask: bool [batch, 1, seq, keys] (True = attend)."""
        batch, seq, _ = x.shape
        q, k, v = (linear(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
                   for linear in self.linear_layers)
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_index, k, v)
        gqa, dropout = self.kv_heads_num != self.heads_num, self.dropout if self.training else 0.0
        if isinstance(attn_mask, DocumentSpans):
            out = span_attention(q, k, v, attn_mask, dropout, gqa)
        elif attn_mask is not None and not torch.is_tensor(attn_mask):  # a FlexAttention BlockMask
            out = flex_attention()(q, k, v, block_mask=attn_mask, enable_gqa=gqa)
        elif is_causal and attn_mask is None and k.shape[2] == seq and self.scale is None:
            out = causal_attention(q, k, v, dropout, gqa)
        else:  # attn_mask may be additive (float): T5's position bias
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=is_causal and attn_mask is None,
                dropout_p=dropout, enable_gqa=gqa, scale=self.scale)
        return self.final_linear(out.transpose(1, 2).reshape(batch, seq, -1))


# SDPA's CPU flash kernel takes keys in blocks of 512 and skips only blocks wholly above the
# diagonal, so up to 512 positions causal attention costs it as much as full attention.
# Split in two, the first half of the queries sees only the first half of the keys: a
# quarter of the work skipped, ~20% of attention time at 512 (docs/benchmarks.md); past
# 512 the kernel skips blocks itself and the split gains nothing.
CPU_SPLIT_CAUSAL = range(128, 513)


def causal_attention(q, k, v, dropout, gqa):
    """Causal SDPA over [batch, heads, seq, dim], queries and keys the same positions: every
    causal call of this module (a whole row, or one packed example) goes through here."""
    if not dropout and q.device.type == "cpu" and q.shape[2] in CPU_SPLIT_CAUSAL:
        return split_causal_attention(q, k, v, gqa)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout,
                                          enable_gqa=gqa)


def split_causal_attention(q, k, v, gqa):
    """Causal SDPA over [batch, heads, seq, dim] as two query halves; equal to one call."""
    seq = q.shape[2]
    half = seq // 2
    first = F.scaled_dot_product_attention(q[:, :, :half], k[:, :, :half], v[:, :, :half],
                                           is_causal=True, enable_gqa=gqa)
    # rows half..seq-1 of the causal square: query half + i sees keys 0..half + i
    mask = torch.ones(seq - half, seq, dtype=torch.bool, device=q.device).tril_(half)
    second = F.scaled_dot_product_attention(q[:, :, half:], k, v, attn_mask=mask,
                                            enable_gqa=gqa)
    return torch.cat([first, second], dim=2)


@torch.compiler.disable  # a Python loop over data-dependent runs: eager, not recompiled per batch
def span_attention(q, k, v, spans, dropout, gqa):
    """Packed samples: causal SDPA over each example's run alone ([batch, heads, seq, dim] in
    and out). Nothing is computed between examples, and each call takes SDPA's causal fast
    path instead of the math kernel a dense boolean mask needs."""
    rows = []
    for b, runs in enumerate(spans.rows):
        parts = []
        for start, length in runs:
            run = [t[b:b + 1, :, start:start + length] for t in (q, k, v)]
            window = spans.window_mask(length, q.device)
            parts.append(causal_attention(*run, dropout, gqa) if window is None else
                         F.scaled_dot_product_attention(*run, attn_mask=window,
                                                        dropout_p=dropout, enable_gqa=gqa))
        rows.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    return torch.cat(rows) if len(rows) > 1 else rows[0]


@functools.cache
def flex_attention():
    """FlexAttention, compiled once: uncompiled it materialises the whole score matrix."""
    from torch.nn.attention.flex_attention import flex_attention as kernel
    return torch.compile(kernel, dynamic=False)
