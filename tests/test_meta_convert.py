"""Meta's original checkpoint layout (params.json + consolidated.NN.pth shards) -> ours."""
import json
import os

import pytest
import torch

import tencentpretrain
from tencentpretrain.config import load_config
from tencentpretrain.convert.hf_llama import config_to_hf, tencentpretrain_to_hf
from tencentpretrain.convert.meta_llama import meta_feedforward_size
from tests.conftest import ROOT
from tests.training_support import run_tool

transformers = pytest.importorskip("transformers")

VOCAB = 320
SCRIPT = "scripts/convert_llama_to_tencentpretrain.py"
# (HF name, Meta name, dimension Meta's model parallelism splits it along; None = replicated)
META_LAYOUT = [
    ("model.embed_tokens.weight", "tok_embeddings.weight", 1),
    ("model.norm.weight", "norm.weight", None),
    ("lm_head.weight", "output.weight", 0),
    ("self_attn.q_proj.weight", "attention.wq.weight", 0),
    ("self_attn.k_proj.weight", "attention.wk.weight", 0),
    ("self_attn.v_proj.weight", "attention.wv.weight", 0),
    ("self_attn.o_proj.weight", "attention.wo.weight", 1),
    ("mlp.gate_proj.weight", "feed_forward.w1.weight", 0),
    ("mlp.up_proj.weight", "feed_forward.w3.weight", 0),
    ("mlp.down_proj.weight", "feed_forward.w2.weight", 1),
    ("input_layernorm.weight", "attention_norm.weight", None),
    ("post_attention_layernorm.weight", "ffn_norm.weight", None),
]


def hf_to_meta_rows(w, heads):
    """Undo the q/k permutation of transformers' convert_llama_weights_to_hf.py."""
    rows, cols = w.shape
    return w.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def write_meta_checkpoint(folder, hf, params, shards=2):
    """Save ``hf`` the way Meta ships LLaMA: params.json and one file per model-parallel rank."""
    config = hf.config
    hf_state = hf.state_dict()
    meta = {}
    for hf_name, meta_name, dim in META_LAYOUT:
        if hf_name.startswith("model.") or hf_name == "lm_head.weight":
            meta[meta_name] = (hf_state[hf_name], dim)
            continue
        for i in range(config.num_hidden_layers):
            w = hf_state[f"model.layers.{i}.{hf_name}"]
            if hf_name == "self_attn.q_proj.weight":
                w = hf_to_meta_rows(w, config.num_attention_heads)
            elif hf_name == "self_attn.k_proj.weight":
                w = hf_to_meta_rows(w, config.num_key_value_heads)
            meta[f"layers.{i}.{meta_name}"] = (w, dim)
    os.makedirs(folder)
    for rank in range(shards):
        shard = {name: (w if dim is None else w.chunk(shards, dim=dim)[rank]).clone()
                 for name, (w, dim) in meta.items()}
        shard["rope.freqs"] = torch.zeros(config.head_dim // 2)
        torch.save(shard, os.path.join(folder, f"consolidated.{rank:02d}.pth"))
    with open(os.path.join(folder, "params.json"), "w") as f:
        json.dump(params, f)


def random_hf(config_path, seed):
    config = load_config(os.path.join(ROOT, config_path))
    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config_to_hf(config, VOCAB)))
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return config, hf.eval()


@pytest.mark.parametrize("config_path,params", [
    ("models/llama/tiny_config.json",  # LLaMA 1 style: no n_kv_heads, vocab_size -1
     {"dim": 64, "n_layers": 2, "n_heads": 4, "multiple_of": 4, "norm_eps": 1e-6,
      "vocab_size": -1}),
    ("models/llama/tiny_gqa_config.json",  # LLaMA 2/3 style: GQA, ffn multiplier, rope_theta
     {"dim": 64, "n_layers": 2, "n_heads": 8, "n_kv_heads": 2, "multiple_of": 32,
      "ffn_dim_multiplier": 0.75, "norm_eps": 1e-5, "rope_theta": 500000.0,
      "vocab_size": VOCAB}),
])
def test_two_shard_meta_checkpoint_equals_hf(tmp_path, config_path, params, capsys):
    config, hf = random_hf(config_path, seed=11)
    write_meta_checkpoint(tmp_path / "meta", hf, params)
    out, out_config = tmp_path / "ours.bin", tmp_path / "config.json"
    status, _, err = run_tool(SCRIPT, ["--input_model_path", tmp_path / "meta",
                                       "--output_model_path", out, "--output_config_path",
                                       out_config, "--max_seq_length", "1024"], capsys)
    assert status == 0, err
    written = load_config(str(out_config))
    for key in ("feedforward_size", "kv_heads_num", "rope_theta", "layernorm_eps",
                "max_seq_length", "heads_num", "layers_num"):
        assert getattr(written, key) == getattr(config, key), key

    model = tencentpretrain.load_model(str(out_config), str(out))
    ids = torch.randint(0, VOCAB, (2, 23), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-4
    back = tencentpretrain_to_hf(model.state_dict(), config)
    for name, tensor in hf.state_dict().items():
        assert torch.equal(back[name], tensor), name


@pytest.mark.parametrize("dim,multiple_of,multiplier,expected", [
    (4096, 256, None, 11008),  # LLaMA 7B
    (5120, 256, None, 13824),  # LLaMA 13B
    (8192, 4096, 1.3, 28672),  # LLaMA 2 70B
    (4096, 1024, 1.3, 14336),  # LLaMA 3 8B
])
def test_feedforward_size_like_meta(dim, multiple_of, multiplier, expected):
    assert meta_feedforward_size(dim, multiple_of, multiplier) == expected


def test_bad_folder_is_one_line_error(tmp_path, capsys):
    (tmp_path / "params.json").write_text('{"dim": 64}')
    status, _, err = run_tool(SCRIPT, ["--input_model_path", tmp_path,
                                       "--output_model_path", tmp_path / "x.bin"], capsys)
    assert status == 2
    assert err.strip().splitlines() == [
        f'error: {tmp_path / "params.json"}: missing "n_layers"']


def test_llama31_params_give_the_llama3_rope_scaling_and_the_shipped_config():
    """Meta's LLaMA-3.1-8B params.json converts to exactly models/llama3.1/8b_config.json."""
    from tencentpretrain.config import config_from_dict
    from tencentpretrain.convert.meta_llama import config_from_meta
    params = {"dim": 4096, "ffn_dim_multiplier": 1.3, "multiple_of": 1024, "n_heads": 32,
              "n_kv_heads": 8, "n_layers": 32, "norm_eps": 1e-05, "rope_theta": 500000.0,
              "use_scaled_rope": True, "vocab_size": 128256}
    converted = config_from_dict(config_from_meta(params, max_seq_length=131072))
    shipped = load_config(os.path.join(ROOT, "models", "llama3.1", "8b_config.json"))
    assert converted == shipped.__class__(**{**shipped.__dict__, "source": "<dict>"})
    assert config_from_meta({**params, "use_scaled_rope": False})["rope_scaling"] is None
