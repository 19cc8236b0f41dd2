"""Language-model target: projects hidden states to the vocabulary and, given
labels, returns the summed token cross-entropy and the number of counted tokens.

Returning a sum and a count (not a mean) lets the trainer normalise over all
counted tokens of the global batch, whatever the padding of each micro-batch.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class LmTarget(nn.Module):
    def __init__(self, config, vocab_size):
        super().__init__()
        self.output_layer = nn.Linear(config.hidden_size, vocab_size, bias=False)

    def forward(self, hidden, labels=None, loss_mask=None):
        logits = self.output_layer(hidden)
        if labels is None:
            return logits
        if loss_mask is None:
            loss_mask = torch.ones_like(labels, dtype=torch.bool)
        loss_mask = loss_mask.bool()
        token_loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                     reduction="none")
        loss_sum = torch.where(loss_mask.flatten(), token_loss, 0.0).sum()
        return loss_sum, loss_mask.sum()
