"""Activation functions by config name (``hidden_act``)."""
import torch.nn.functional as F


def gelu_fast(x):
    return F.gelu(x, approximate="tanh")


str2act = {"silu": F.silu, "gelu": F.gelu, "gelu_fast": gelu_fast, "relu": F.relu}
