"""Standard LayerNorm ("normal" in configs), kept for non-LLaMA configs."""
import torch.nn as nn


class LayerNorm(nn.LayerNorm):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__(hidden_size, eps=eps)
