"""Throughput and model FLOPs utilisation (MFU).

Model FLOPs per trained token follow PaLM (Chowdhery et al. 2022, appendix B):
6 x (parameters in matmuls) for forward and backward, plus 12 x layers x hidden x
sequence for the attention scores and their weighted sum. A frozen matrix (LoRA's
base) costs 4, not 6: its backward computes the input gradient but no weight
gradient. Norm gains and biases are not matmuls, and the embedding is a lookup
unless it is tied to the output layer. Recomputation by activation checkpointing
is not counted (that would be hardware FLOPs).
"""
import time

import torch

from tencentpretrain.models import layout

# Dense bf16/fp16 tensor-core peaks, TFLOP/s per device (vendor datasheets).
PEAK_TFLOPS = {"H200": 989, "H100": 989, "H800": 989, "H20": 148, "A100": 312, "A800": 312,
               "L40S": 362, "L40": 181, "A10": 125, "V100": 125, "4090": 165, "3090": 71}


def full_numel(param):
    """Elements of a parameter, also when ZeRO-3 left only a partition (or nothing) here."""
    return getattr(param, "ds_numel", param.numel())


def flops_per_token(model, seq_length):
    config = model.config
    lookup = layout.embedding_table(model).weight
    flops = 12 * config.layers_num * config.hidden_size * seq_length
    for param in {id(p): p for p in model.parameters()}.values():
        if len(getattr(param, "ds_shape", param.shape)) < 2:
            continue
        if param is lookup and not config.tie_weights:
            continue
        flops += (6 if param.requires_grad else 4) * full_numel(param)
    return flops


def peak_flops(override_tflops=None):
    """Peak FLOP/s of one device, or None on CPU / an unknown GPU (no MFU then)."""
    if override_tflops:
        return override_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


class Throughput:
    """Tokens/s (global) and MFU over the interval since the last report."""

    def __init__(self, flops_per_token, world_size, peak):
        self.flops_per_token, self.world_size, self.peak = flops_per_token, world_size, peak
        self.tokens, self.start = 0, time.perf_counter()

    def add(self, tokens):
        self.tokens += tokens

    def report(self):
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        tokens_per_s = self.tokens / elapsed
        mfu = None
        if self.peak:
            mfu = tokens_per_s * self.flops_per_token / (self.peak * self.world_size)
        self.tokens, self.start = 0, time.perf_counter()
        return tokens_per_s, mfu
