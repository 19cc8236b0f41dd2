"""Preallocated key/value cache for incremental decoding.

Each layer's keys and values live in one [batch, kv_heads, max_length, head_dim]
buffer; a decoding step writes its new positions and attends over the filled
prefix, so a new token costs one position of compute.
"""
import torch


class KVCache:
    def __init__(self, layers_num, batch_size, kv_heads, head_dim, max_length, dtype, device):
        shape = (batch_size, kv_heads, max_length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers_num)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers_num)]
        self.max_length = max_length
        self.length = 0  # positions filled so far, shared by all layers

    def update(self, layer, k, v):
        """Store this step's k/v for one layer; return all keys/values up to this step."""
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions, step needs {end}")
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, steps):
        self.length += steps

    def reorder(self, keep):
        """Keep only the batch rows in ``keep`` (an index tensor), e.g. after rows finish."""
        self.keys = [k.index_select(0, keep) for k in self.keys]
        self.values = [v.index_select(0, keep) for v in self.values]
