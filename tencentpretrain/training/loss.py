"""Loss normalisation: the mean token cross-entropy over the *global* batch.

The model returns, per micro-batch, the summed cross-entropy of its counted tokens
(labels that are real tokens and, with --prefix_lm_loss, inside the answer) and how
many there are. One optimizer step sees A micro-batches on each of W ranks; its loss is

    L = sum of all counted token losses / N,   N = counted tokens over all A x W micro-batches

so every counted token weighs the same whatever the padding or answer length of the
sample it is in. N is all-reduced before the first backward of the step. A backend that
divides each micro-batch gradient by ``loss_divisor`` (DeepSpeed: A for accumulation x W
for averaging over ranks) gets ``loss_sum * loss_divisor / N`` so that what it applies is
exactly dL/dθ.
"""
import torch


def count_tokens(batches, backend):
    """(counted tokens, input tokens) of the step's micro-batches summed over all ranks."""
    local = torch.zeros(2, dtype=torch.float64)
    for batch in batches:
        local[0] += batch["loss_mask"].sum()
        local[1] += (batch["seg"] > 0).sum()
    total = backend.all_reduce_sum(local).cpu()
    return int(total[0]), int(total[1])


def scaled_loss(loss_sum, counted_tokens, loss_divisor):
    return loss_sum * (loss_divisor / max(counted_tokens, 1))
