"""Plain two-layer feed-forward ("dense"), as in BERT/GPT-2 configs."""
import torch.nn as nn


class PositionwiseFeedForward(nn.Module):
    def __init__(self, hidden_size, feedforward_size, act, has_bias):
        super().__init__()
        self.linear_1 = nn.Linear(hidden_size, feedforward_size, bias=has_bias)
        self.linear_2 = nn.Linear(feedforward_size, hidden_size, bias=has_bias)
        self.act = act

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))
