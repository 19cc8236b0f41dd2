"""Language-model target: projects hidden states to the vocabulary and, given
labels, returns the summed token cross-entropy and the number of counted tokens.

Returning a sum and a count (not a mean) lets the trainer normalise over all
counted tokens of the global batch, whatever the padding of each micro-batch.
With labels, the loss never materialises the whole [tokens, vocab] logits (see
linear_cross_entropy.py).
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from tencentpretrain.targets.linear_cross_entropy import linear_cross_entropy


class LmTarget(nn.Module):
    def __init__(self, config, vocab_size):
        super().__init__()
        self.output_layer = nn.Linear(config.hidden_size, vocab_size, bias=False)

    def forward(self, hidden, labels=None, loss_mask=None):
        if labels is None:
            return self.output_layer(hidden)
        if loss_mask is None:
            loss_mask = torch.ones_like(labels, dtype=torch.bool)
        loss_mask = loss_mask.bool()
        if type(self.output_layer) is not nn.Linear:  # wrapped (an adapter): its own forward
            token_loss = F.cross_entropy(self.output_layer(hidden).float().flatten(0, 1),
                                         labels.flatten(), reduction="none")
            return torch.where(loss_mask.flatten(), token_loss, 0.0).sum(), loss_mask.sum()
        weight = self.output_layer.weight
        with _gathered(weight):
            loss_sum = linear_cross_entropy(hidden, weight, labels, loss_mask)
        return loss_sum, loss_mask.sum()


def _gathered(weight):
    """The whole weight under ZeRO-3. Inside the DeepSpeed engine's forward, reading
    ``output_layer.weight`` from this module already gathered it and registered it as an
    external parameter of this module, so it is gathered again for this module's backward;
    outside the engine (a bare call on a partitioned model) it is gathered here for the call."""
    if getattr(weight, "ds_status", None) is None:
        return contextlib.nullcontext()
    from deepspeed.runtime.zero.partition_parameters import GatheredParameters, ZeroParamStatus
    return GatheredParameters([weight], enabled=weight.ds_status == ZeroParamStatus.NOT_AVAILABLE)
