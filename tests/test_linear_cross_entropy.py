"""The chunked output-layer loss equals the plain one: values and gradients."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tencentpretrain
from tencentpretrain.config import load_config
from tencentpretrain.data.batching import collate
from tencentpretrain.data.dataset import Sample
from tencentpretrain.targets import linear_cross_entropy as lce
from tests.training_support import TINY


def plain_loss(hidden, weight, labels, loss_mask):
    """What lm_target.py did before: whole [tokens, vocab] logits and F.cross_entropy."""
    logits = hidden @ weight.t()
    token_loss = F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(),
                                 reduction="none")
    return torch.where(loss_mask.flatten(), token_loss, 0.0).sum()


def loss_and_grads(loss_fn, hidden, weight, labels, loss_mask, scale):
    hidden, weight = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    loss = loss_fn(hidden, weight, labels, loss_mask)
    (loss * scale).backward()
    return loss.detach(), hidden.grad, weight.grad


def assert_rel_close(actual, expected, rel=1e-5):
    error = (actual - expected).abs().max() / expected.abs().max()
    assert error <= rel, f"relative error {error:.2e}"


@pytest.mark.parametrize("shape,chunk_logits", [
    ((3, 37, 24, 1003), 5000),     # 4 tokens per chunk: 111 tokens = 27 chunks + 3
    ((2, 19, 16, 70001), 1 << 23),  # one chunk of 119 tokens, vocabulary larger than it
    ((1, 1, 8, 11), 1),            # a chunk per token
])
def test_equals_plain_cross_entropy(shape, chunk_logits, monkeypatch):
    monkeypatch.setattr(lce, "CHUNK_LOGITS", chunk_logits)
    batch, seq, hidden_size, vocab = shape
    generator = torch.Generator().manual_seed(sum(shape))
    hidden = torch.randn(batch, seq, hidden_size, generator=generator)
    weight = torch.randn(vocab, hidden_size, generator=generator) * 0.3
    labels = torch.randint(0, vocab, (batch, seq), generator=generator)
    loss_mask = torch.rand(batch, seq, generator=generator) > 0.3
    loss_mask.view(-1)[0] = True
    labels[~loss_mask] = -100  # a masked-out label may be anything, even out of range
    plain = loss_and_grads(plain_loss, hidden, weight, labels, loss_mask, 0.37)
    chunked = loss_and_grads(lce.linear_cross_entropy, hidden, weight, labels, loss_mask, 0.37)
    for actual, expected in zip(chunked, plain):
        assert_rel_close(actual, expected)
    assert (chunked[1][~loss_mask] == 0).all()  # masked tokens get no gradient


def test_without_grad_only_the_loss():
    hidden, weight = torch.randn(2, 5, 8), torch.randn(13, 8)
    labels, loss_mask = torch.randint(0, 13, (2, 5)), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        loss = lce.linear_cross_entropy(hidden, weight, labels, loss_mask)
    assert_rel_close(loss, plain_loss(hidden, weight, labels, loss_mask))


@pytest.mark.parametrize("tie_weights", [False, True])
def test_model_loss_and_grads_equal_plain_with_prefix_lm_loss(tie_weights, monkeypatch):
    """The whole model (odd lengths, padding, --prefix_lm_loss masks): the loss it returns
    and every parameter gradient equal those of cross-entropy over its full logits."""
    monkeypatch.setattr(lce, "CHUNK_LOGITS", 320 * 7)  # 7 tokens per chunk
    config = dataclasses.replace(load_config(TINY), tie_weights=tie_weights)
    torch.manual_seed(0)
    model = tencentpretrain.build_model(config, 320)
    model.init_weights()
    samples = [Sample(np.random.default_rng(n).integers(3, 320, n), p, np.ones(n, np.int32))
               for n, p in ((23, 9), (12, 5), (30, 1))]
    batch = collate(samples, pad_id=0, prefix_lm_loss=True)
    assert 0 < batch["loss_mask"].sum() < (batch["seg"] > 0).sum()

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    loss_sum, counted = model(**batch)
    chunked = grads(loss_sum)
    logits = model(batch["input_ids"])
    expected = plain_loss_from_logits(logits, batch["labels"], batch["loss_mask"])
    plain = grads(expected)
    assert counted == batch["loss_mask"].sum()
    assert_rel_close(loss_sum.detach(), expected.detach())
    assert chunked.keys() == plain.keys()
    for name in plain:
        assert_rel_close(chunked[name], plain[name])


def plain_loss_from_logits(logits, labels, loss_mask):
    token_loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                 reduction="none")
    return torch.where(loss_mask.flatten(), token_loss, 0.0).sum()


def test_bf16_autocast_matches_plain_autocast():
    """Under autocast the matmuls run in bf16 as the plain version's do; log-softmax stays
    fp32 and the gradients come back in the parameters' dtype."""
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 33, 32, generator=generator)
    weight = torch.randn(501, 32, generator=generator) * 0.3
    labels = torch.randint(0, 501, (2, 33), generator=generator)
    loss_mask = torch.ones(2, 33, dtype=torch.bool)
    results = []
    for loss_fn in (plain_loss, lce.linear_cross_entropy):
        with torch.autocast("cpu", torch.bfloat16):
            results.append(loss_and_grads(loss_fn, hidden, weight, labels, loss_mask, 1.0))
    (plain_value, *plain_grads), (value, *grads) = results
    assert value.dtype == torch.float32
    assert_rel_close(value, plain_value, rel=1e-3)
    for grad, plain_grad in zip(grads, plain_grads):
        assert grad.dtype == torch.float32
        assert_rel_close(grad, plain_grad, rel=2e-2)


def test_wrapped_output_layer_keeps_its_forward():
    """A head wrapped after build (e.g. by an adapter) is called, not bypassed."""
    torch.manual_seed(0)
    model = tencentpretrain.build_model(TINY, 320)
    head = model.target.lm.output_layer

    class Shifted(torch.nn.Module):
        def forward(self, x):
            return head(x) + torch.arange(320.0) / 320

    input_ids = torch.randint(0, 320, (2, 9))
    loss_sum, _ = model(input_ids, labels=input_ids)
    model.target.lm.output_layer = Shifted()
    wrapped_sum, _ = model(input_ids, labels=input_ids)
    expected = plain_loss_from_logits(model(input_ids), input_ids, torch.ones(2, 9, dtype=bool))
    assert_rel_close(wrapped_sum, expected)
    assert abs(wrapped_sum - loss_sum) > 1e-3


@pytest.mark.parametrize("fused", [True, False], ids=["fused_softmax", "separate_passes"])
def test_both_softmax_ways_equal_plain_even_when_probabilities_underflow(fused):
    """Some targets here are so unlikely that their probability is 0 in fp32 (token losses
    in the hundreds): the loss stays exact; d loss / d logits is softmax - one_hot."""
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(9, 50, generator=generator) * 40
    targets = torch.randint(0, 50, (9, 1), generator=generator)
    targets[:3] = logits[:3].argmax(dim=1, keepdim=True)  # and some likely ones
    expected = F.cross_entropy(logits, targets.squeeze(1), reduction="none")
    assert (expected > lce.UNDERFLOW_LOSS).sum() >= 3  # the case this test is for
    assert (expected < 1).any()
    probs = logits.clone()
    loss = lce.softmax_cross_entropy_(probs, targets, lambda rows: logits[rows], fused=fused)
    assert_rel_close(loss, expected.sum(), rel=1e-6)
    assert_rel_close(probs, logits.softmax(dim=1), rel=1e-6)
