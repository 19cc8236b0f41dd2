"""T5's relative position bias (config ``relative_position_embedding``).

The signed distance key - query falls in one of ``relative_attention_buckets_num`` buckets:
exact for small distances, logarithmic up to ``relative_attention_max_distance``, the last
bucket beyond. An encoder's buckets are bidirectional (half for keys after the query), a
decoder's causal (only keys at or before the query). Each bucket has a learned bias per
head, added to the attention scores. One module per stack computes the bias once per
forward (T5's first layer) and every layer adds the same one.

TencentPretrain's names: ``encoder.relative_pos_emb.relative_attention_bias.weight``,
``decoder.self_pos_emb.relative_attention_bias.weight`` ([buckets, heads]).
"""
import math

import torch
import torch.nn as nn


def relative_position_bucket(relative_position, bidirectional, num_buckets, max_distance):
    """Bucket index of each ``relative_position`` (key - query), as T5 (mesh-tensorflow)."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        relative_position = relative_position.abs()
    else:
        relative_position = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    large = max_exact + (torch.log(relative_position.float() / max_exact)
                         / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, relative_position, large)


def relative_position_embedding(config, bidirectional):
    """The config's relative position bias (T5's), one module that every layer of a stack
    uses, or None when the config has none."""
    if not config.relative_position_embedding:
        return None
    return RelativePositionEmbedding(config.heads_num, bidirectional,
                                     num_buckets=config.relative_attention_buckets_num,
                                     max_distance=config.relative_attention_max_distance)


class RelativePositionEmbedding(nn.Module):
    def __init__(self, heads_num, bidirectional, num_buckets=32, max_distance=128):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads_num)

    def forward(self, query_length, key_length, past=0, device=None):
        """Bias [1, heads, query_length, key_length] of queries at positions past.. over keys
        at positions 0..key_length-1."""
        device = device or self.relative_attention_bias.weight.device
        query = torch.arange(past, past + query_length, dtype=torch.long, device=device)[:, None]
        key = torch.arange(key_length, dtype=torch.long, device=device)[None, :]
        buckets = relative_position_bucket(key - query, self.bidirectional, self.num_buckets,
                                           self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)


def add_bias(bias, mask):
    """An additive float mask: ``bias`` [1, heads, q, k] plus -inf where the bool ``mask``
    (broadcasting to [batch, 1, q, k], or None = everything visible) forbids attention."""
    if mask is None:
        return bias
    return torch.where(mask, bias, float("-inf"))
