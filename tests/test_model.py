"""The model against the reference implementation (transformers' LLaMA)."""
import json
import os

import pytest
import torch

import tencentpretrain
from tencentpretrain.config import config_from_dict, load_config
from tencentpretrain.convert.hf_llama import (config_to_hf, hf_to_tencentpretrain,
                                              tencentpretrain_to_hf)
from tests.conftest import ROOT
from tests.training_support import run_tool

transformers = pytest.importorskip("transformers")

VOCAB = 320


def hf_model(config_path, seed=0):
    config = load_config(os.path.join(ROOT, config_path))
    hf_config = transformers.LlamaConfig(**config_to_hf(config, VOCAB))
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():  # non-trivial norms so a swapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return config, model


@pytest.mark.parametrize("config_path", ["models/llama/tiny_config.json",
                                         "models/llama/tiny_gqa_config.json"])
def test_logits_equal_transformers(config_path):
    config, hf = hf_model(config_path)
    assert config_path.endswith("tiny_config.json") or (
        config.kv_heads_num < config.heads_num and config.rope_theta != 10000)
    ours = tencentpretrain.build_model(config, VOCAB).eval()
    ours.load_state_dict(hf_to_tencentpretrain(hf.state_dict(), config))
    input_ids = torch.randint(0, VOCAB, (3, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(input_ids).logits
        got = ours(input_ids)
    assert got.shape == (3, 37, VOCAB)
    assert (got - expected).abs().max().item() <= 1e-4


def test_hf_round_trip_is_identical():
    config, hf = hf_model("models/llama/tiny_gqa_config.json")
    hf_state = hf.state_dict()
    back = tencentpretrain_to_hf(hf_to_tencentpretrain(hf_state, config), config)
    assert set(back) == set(hf_state) - {k for k in hf_state if "rotary" in k}
    for name, tensor in back.items():
        assert torch.equal(tensor, hf_state[name]), name


def test_conversion_scripts_round_trip(tmp_path, capsys):
    config_path = "models/llama/tiny_gqa_config.json"
    config, hf = hf_model(config_path, seed=3)
    hf_dir = tmp_path / "hf"
    hf.save_pretrained(hf_dir)  # safetensors
    ours_path = tmp_path / "ours.bin"
    status, _, err = run_tool("scripts/convert_llama_from_huggingface_to_tencentpretrain.py", [
        "--input_model_path", hf_dir, "--output_model_path", ours_path,
        "--output_config_path", tmp_path / "cfg.json"], capsys)
    assert status == 0, err
    assert json.loads((tmp_path / "cfg.json").read_text())["local_kv_heads_num"] == 2
    model = tencentpretrain.load_model(os.path.join(ROOT, config_path), str(ours_path))
    input_ids = torch.randint(0, VOCAB, (2, 19))
    with torch.no_grad():
        assert (model(input_ids) - hf(input_ids).logits).abs().max().item() <= 1e-4
    out_dir = tmp_path / "hf_again"
    status, _, err = run_tool("scripts/convert_tencentpretrain_to_llama_huggingface.py", [
        "--input_model_path", ours_path, "--config_path", os.path.join(ROOT, config_path),
        "--output_model_path", out_dir], capsys)
    assert status == 0, err
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out_dir).eval()
    original = hf.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name


def test_sharded_pytorch_bin_hf_folder(tmp_path):
    config, hf = hf_model("models/llama/tiny_config.json", seed=5)
    (tmp_path / "hf").mkdir()
    state = hf.state_dict()
    names = sorted(state)
    for shard, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        torch.save({n: state[n] for n in part}, tmp_path / "hf" / f"pytorch_model-0000{shard + 1}-of-00002.bin")
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config_to_hf(config, VOCAB)))
    from tencentpretrain.convert.hf_llama import read_hf_folder
    hf_config, state = read_hf_folder(str(tmp_path / "hf"))
    ours = hf_to_tencentpretrain(state, config)
    model = tencentpretrain.build_model(config, VOCAB).eval()
    model.load_state_dict(ours)
    x = torch.randint(0, VOCAB, (1, 11))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("path,count", [("models/llama/7b_config.json", 6_738_415_616),
                                        ("models/llama/13b_config.json", 13_015_864_320),
                                        ("models/llama2/7b_config.json", 6_738_415_616),
                                        ("models/llama2/70b_config.json", 68_976_648_192)])
def test_published_parameter_counts_on_meta(path, count):
    model = tencentpretrain.build_model(os.path.join(ROOT, path), 32000, device="meta")
    assert next(model.parameters()).device.type == "meta"
    assert sum(p.numel() for p in model.parameters()) == count


def test_tied_embeddings_share_storage():
    raw = json.loads(open(os.path.join(ROOT, "models/llama/tiny_config.json")).read())
    raw["tie_weights"] = True
    model = tencentpretrain.build_model(config_from_dict(raw), VOCAB)
    assert model.target.lm.output_layer.weight is model.embedding.word.embedding.weight


def test_document_mask_keeps_attention_inside_documents():
    raw = json.loads(open(os.path.join(ROOT, "models/llama/tiny_config.json")).read())
    plain = tencentpretrain.build_model(config_from_dict(raw), VOCAB).eval()
    raw["mask"] = "causal_document"
    documented = tencentpretrain.build_model(config_from_dict(raw), VOCAB).eval()
    documented.load_state_dict(plain.state_dict())
    first, second = torch.randint(0, VOCAB, (1, 5)), torch.randint(0, VOCAB, (1, 6))
    packed = torch.cat([first, second], dim=1)
    seg = torch.tensor([[1] * 5 + [2] * 6])
    with torch.no_grad():
        got = documented(packed, seg=seg)
        # each document alone, with positions continuing from the packed sample
        alone = plain(second, position_ids=torch.arange(5, 11)[None])
        assert torch.allclose(got[:, :5], plain(first), atol=1e-5)
        assert torch.allclose(got[:, 5:], alone, atol=1e-5)
        assert not torch.allclose(plain(packed)[:, 5:], alone, atol=1e-3)
