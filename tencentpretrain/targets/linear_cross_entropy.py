"""Output projection + summed token cross-entropy, computed chunk by chunk over tokens.

Why: done plainly, ``cross_entropy(linear(hidden))`` keeps the [tokens, vocab] fp32 logits,
their log-softmax and, in backward, a zero-filled gradient of the same size (each 524 MB at
8 x 512 tokens x 32000). Here only one chunk of logits exists at a time: the forward pass
computes each chunk's loss and, right away, its gradients with respect to hidden and weight;
backward only scales them by the incoming gradient (the loss is a sum, so its gradient is
linear in it). Same FLOPs as the plain version, no recomputation; and tokens the loss skips
(padding, prompts under --prefix_lm_loss) get no logits at all.

The weight must be whole when ``apply`` runs: under ZeRO-3 the caller gathers it first
(``LmTarget`` does), and autograd hands the weight gradient to the parameter as usual.
"""
import math

import torch

# Logits per chunk (x 4 bytes in fp32): 64 MB, 524 tokens at LLaMA's vocabulary. On CPU the
# matmuls are markedly faster at 512 tokens per chunk than at 256 (docs/benchmarks.md).
CHUNK_LOGITS = 1 << 24


def chunk_tokens_for(vocab_size):
    return max(1, CHUNK_LOGITS // vocab_size)


class LinearCrossEntropy(torch.autograd.Function):
    """loss_sum = sum over tokens of cross_entropy(hidden @ weight.T, labels).

    hidden [tokens, hidden_size], weight [vocab, hidden_size], labels [tokens]: every token
    counts (``linear_cross_entropy`` drops the others first). ``compute_dtype`` is the matmul
    dtype (bf16 under autocast); log-softmax is always fp32. Returns a 0-dim fp32 tensor.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, compute_dtype, with_grads):
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
            loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(h) if with_grads else None
            grad_weight = torch.zeros(w.shape, dtype=torch.float32, device=w.device) \
                if with_grads else None
            step = max(1, min(chunk_tokens_for(w.shape[0]), h.shape[0]))
            # one fp32 buffer for every chunk's logits, reused in place: no fresh
            # [chunk, vocab] allocation (and page faults) per chunk
            buffer = torch.empty(step, w.shape[0], dtype=torch.float32, device=h.device)
            for start in range(0, h.shape[0], step):
                h_c = h[start:start + step]
                targets = labels[start:start + step, None]
                logits = buffer[:h_c.shape[0]]
                if compute_dtype == torch.float32:
                    torch.mm(h_c, w.t(), out=logits)
                else:
                    logits.copy_(h_c @ w.t())
                loss_sum += softmax_cross_entropy_(logits, targets,
                                                   lambda rows: h_c[rows] @ w.t())
                if not with_grads:
                    continue
                # d loss / d logits = softmax - one_hot(target)
                grad_logits = logits.scatter_add_(
                    1, targets, torch.full(targets.shape, -1.0, device=logits.device))
                grad_logits = grad_logits.to(compute_dtype)
                torch.mm(grad_logits, w, out=grad_hidden[start:start + step])
                if grad_weight.dtype == compute_dtype:
                    grad_weight.addmm_(grad_logits.t(), h_c)
                else:  # bf16 matmul, fp32 sum over chunks
                    grad_weight += grad_logits.t() @ h_c
        if with_grads:
            ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = hidden.dtype, weight.dtype
        return loss_sum

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        grad_hidden = (grad_hidden * grad_loss).to(hidden_dtype) \
            if ctx.needs_input_grad[0] else None
        grad_weight = (grad_weight * grad_loss).to(weight_dtype) \
            if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None, None


def softmax_cross_entropy_(logits, targets, logits_of_rows, fused=None):
    """Summed cross-entropy of fp32 ``logits`` [tokens, vocab] against ``targets``
    [tokens, 1]; turns ``logits`` into their softmax in place.

    On CPU, softmax's fused kernel (each row max, exp-sum and scale while it is in cache)
    takes about half the time of the separate passes below, and the loss is -log of the
    target's probability. That is exact unless the probability underflows (a token loss
    above ~87); those rows, read off a CPU tensor at no cost, are recomputed from
    ``logits_of_rows(rows)``. Elsewhere reading that flag would stall the device, so the
    loss comes from the shifted logits in separate in-place passes, which never underflow.
    ``fused`` (default: on CPU) picks the first way.
    """
    if fused is None:
        fused = logits.device.type == "cpu"
    if fused:
        probs = torch.softmax(logits, dim=1, out=logits)
        token_loss = -probs.gather(1, targets).log_()
        underflow = token_loss.squeeze(1) > UNDERFLOW_LOSS
        if underflow.any():
            rows = underflow.nonzero().squeeze(1)
            exact = logits_of_rows(rows).float()
            token_loss[rows] = (exact.logsumexp(dim=1, keepdim=True)
                                - exact.gather(1, targets[rows]))
        return token_loss.sum()
    logits.sub_(logits.amax(dim=1, keepdim=True))  # shifted: exp cannot overflow
    target_logits = logits.gather(1, targets)
    normaliser = logits.exp_().sum(dim=1, keepdim=True)
    logits.div_(normaliser)
    return (normaliser.log() - target_logits).sum()


# -log of the smallest normal fp32: a target probability below it has lost precision
UNDERFLOW_LOSS = -math.log(torch.finfo(torch.float32).tiny)


def linear_cross_entropy(hidden, weight, labels, loss_mask):
    """Summed cross-entropy of ``hidden @ weight.T`` over tokens where ``loss_mask``;
    shapes [..., hidden_size], [vocab, hidden_size], [...], [...]."""
    device = hidden.device.type
    compute_dtype = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
                     else hidden.dtype)
    with_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    hidden, labels, loss_mask = hidden.flatten(0, -2), labels.flatten(), loss_mask.flatten().bool()
    if not loss_mask.all():  # padding, prompts: no logits at all for tokens the loss skips
        kept = loss_mask.nonzero().squeeze(1)
        hidden, labels = hidden.index_select(0, kept), labels.index_select(0, kept)
    return LinearCrossEntropy.apply(hidden, weight, labels, compute_dtype, with_grads)
