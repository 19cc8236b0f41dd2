"""Gated feed-forward (SwiGLU in LLaMA): linear_2(act(linear_gate(x)) * linear_1(x))."""
import torch.nn as nn


class GatedFeedForward(nn.Module):
    def __init__(self, hidden_size, feedforward_size, act, has_bias):
        super().__init__()
        self.linear_gate = nn.Linear(hidden_size, feedforward_size, bias=has_bias)
        self.linear_1 = nn.Linear(hidden_size, feedforward_size, bias=has_bias)
        self.linear_2 = nn.Linear(feedforward_size, hidden_size, bias=has_bias)
        self.act = act

    def forward(self, x):
        return self.linear_2(self.act(self.linear_gate(x)) * self.linear_1(x))
