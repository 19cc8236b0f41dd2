"""Incremental decoding with the KV cache equals full recomputation."""
import os

import torch

import tencentpretrain
from tencentpretrain.layers.kv_cache import KVCache
from tests.conftest import ROOT


def make_cache(model, batch, length):
    c = model.config
    return KVCache(c.layers_num, batch, c.kv_heads_num, c.head_dim, length, torch.float32, "cpu")


def test_cached_steps_equal_full_forward():
    torch.manual_seed(0)
    model = tencentpretrain.build_model(os.path.join(ROOT, "models/llama/tiny_gqa_config.json"),
                                        97).eval()
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        full = model(ids)
        cache = make_cache(model, 2, 16)
        steps = [model(ids[:, :8], kv_cache=cache)]
        for t in range(8, 12):
            steps.append(model(ids[:, t:t + 1], kv_cache=cache))
    assert cache.length == 12
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_left_padded_batch_equals_unbatched():
    torch.manual_seed(0)
    model = tencentpretrain.build_model(os.path.join(ROOT, "models/llama/tiny_config.json"),
                                        97).eval()
    short, long = torch.randint(1, 97, (1, 4)), torch.randint(1, 97, (1, 7))
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1), long])
    key_mask = batch.new_ones(batch.shape).bool()
    key_mask[0, :3] = False
    positions = (key_mask.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        cache = make_cache(model, 2, 8)
        out = model(batch, position_ids=positions, key_mask=key_mask, kv_cache=cache)
        nxt = torch.tensor([[5], [6]])
        step = model(nxt, position_ids=positions[:, -1:] + 1,
                     key_mask=torch.cat([key_mask, key_mask.new_ones(2, 1)], 1), kv_cache=cache)
        ref_short = model(torch.cat([short, nxt[:1]], 1))
        ref_long = model(torch.cat([long, nxt[1:]], 1))
    assert torch.allclose(out[0, 3:], ref_short[0, :4], atol=1e-5)
    assert torch.allclose(step[0, 0], ref_short[0, 4], atol=1e-5)
    assert torch.allclose(out[1], ref_long[0, :7], atol=1e-5)
    assert torch.allclose(step[1, 0], ref_long[0, 7], atol=1e-5)
