"""Causal training goes through SDPA's flash-attention kernel (forward and backward), with the
q/k/v layout the attention layer hands it: on CPU always, on a GPU where there is one; and the
CPU's split of causal attention into two query halves equals one call."""
import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import tencentpretrain
from tencentpretrain.layers.masks import DocumentSpans
from tencentpretrain.layers.multi_headed_attn import (CPU_SPLIT_CAUSAL, MultiHeadedAttention,
                                                      split_causal_attention)
from tests.conftest import ROOT
from tests.training_support import TINY

TINY_GQA = f"{ROOT}/models/llama/tiny_gqa_config.json"  # grouped-query heads, as TinyLlama

# the fused kernels SDPA may pick: on CUDA flash, or cuDNN's (torch >= 2.5 prefers it on Hopper)
FUSED_OPS = {"cpu": ["aten::_scaled_dot_product_flash_attention_for_cpu"],
             "cuda": ["aten::_scaled_dot_product_flash_attention",
                      "aten::_scaled_dot_product_cudnn_attention"]}


@pytest.mark.parametrize("config", [TINY, TINY_GQA], ids=["mha", "gqa"])
@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a GPU")),
])
def test_causal_training_selects_flash_attention(device, config):
    torch.manual_seed(0)
    model = tencentpretrain.build_model(config, 320).to(device).train()
    input_ids = torch.randint(0, 320, (2, 64), device=device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # GPU flash needs 16-bit
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with torch.autocast(device, dtype, enabled=device == "cuda"):
            loss_sum, _ = model(input_ids, labels=input_ids)
        loss_sum.backward()
    names = {event.name for event in prof.events()}
    assert any(op in names and op + "_backward" in names for op in FUSED_OPS[device]), sorted(
        n for n in names if "attention" in n)
    assert "aten::_scaled_dot_product_efficient_attention" not in names
    assert "aten::_scaled_dot_product_attention_math" not in names


@pytest.mark.parametrize("seq,kv_heads", [(128, 4), (203, 2), (512, 4)])
def test_split_causal_attention_equals_one_causal_call(seq, kv_heads):
    """The CPU split (two query halves) gives causal SDPA's outputs and gradients."""
    generator = torch.Generator().manual_seed(seq)
    q = torch.randn(2, 4, seq, 16, generator=generator, requires_grad=True)
    k, v = (torch.randn(2, kv_heads, seq, 16, generator=generator, requires_grad=True)
            for _ in range(2))
    upstream = torch.randn(2, 4, seq, 16, generator=generator)
    results = []
    for attend in (split_causal_attention,
                   lambda *qkv_gqa: F.scaled_dot_product_attention(
                       *qkv_gqa[:3], is_causal=True, enable_gqa=qkv_gqa[3])):
        out = attend(q, k, v, kv_heads != 4)
        grads = torch.autograd.grad(out, (q, k, v), upstream)
        results.append((out, *grads))
    for split, whole in zip(*results):
        torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)


def test_layer_takes_the_split_only_where_it_pays():
    """CPU causal self-attention of 128..512 positions without dropout splits, for a whole row
    or one packed example; shorter, longer, masked or dropped-out attention is one SDPA call."""
    assert 128 in CPU_SPLIT_CAUSAL and 512 in CPU_SPLIT_CAUSAL
    assert 127 not in CPU_SPLIT_CAUSAL and 513 not in CPU_SPLIT_CAUSAL
    layer = MultiHeadedAttention(32, 4, 4, dropout=0.0, has_bias=False, layer_index=0)

    def flash_calls(seq, **options):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            layer(torch.randn(1, seq, 32), **options)
        return sum(e.name == FUSED_OPS["cpu"][0] for e in prof.events())

    for seq, calls in ((64, 1), (200, 2), (600, 1)):
        assert flash_calls(seq, is_causal=True) == calls, seq
    # packed examples of 200, 64 and 600 positions: 2 + 1 + 1 calls
    seg = torch.tensor([[1] * 200 + [2] * 64 + [3] * 600])
    assert flash_calls(864, attn_mask=DocumentSpans(seg)) == 4
