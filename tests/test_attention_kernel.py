"""Causal training goes through SDPA's flash-attention kernel (forward and backward), with the
q/k/v layout the attention layer hands it: on CPU always, on a GPU where there is one."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import tencentpretrain
from tests.conftest import ROOT
from tests.training_support import TINY

TINY_GQA = f"{ROOT}/models/llama/tiny_gqa_config.json"  # grouped-query heads, as TinyLlama

FLASH_OPS = {"cpu": "aten::_scaled_dot_product_flash_attention_for_cpu",
             "cuda": "aten::_scaled_dot_product_flash_attention"}


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
    flash = FLASH_OPS[device]
    assert flash in names and flash + "_backward" in names, sorted(
        n for n in names if "attention" in n)
    assert "aten::_scaled_dot_product_efficient_attention" not in names
    assert "aten::_scaled_dot_product_attention_math" not in names
