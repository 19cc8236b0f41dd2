"""Qwen2, Mistral and LLaMA-3.1 against transformers: logits, conversion both ways, greedy
generation with the KV cache, shipped configs' parameter counts, and what the converter refuses."""
import json
import os

import pytest
import torch

import tencentpretrain
from tencentpretrain.config import ConfigError, config_from_dict, load_config
from tencentpretrain.convert.hf_llama import (config_from_hf, config_to_hf, hf_to_tencentpretrain,
                                              tencentpretrain_to_hf)
from tencentpretrain.generation import SamplingOptions, generate
from tencentpretrain.utils.weights import WeightsError
from tests.conftest import ROOT
from tests.training_support import run_tool

transformers = pytest.importorskip("transformers")

VOCAB = 320
SHAPE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=2, vocab_size=VOCAB, max_position_embeddings=128,
             rms_norm_eps=1e-6)
LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
# name -> (HF class, config keys); every family with the feature that sets it apart, sized so
# the sequences below (37 tokens, generation to 44) cross the window / the original context.
FAMILIES = {
    "qwen2_tied": ("Qwen2ForCausalLM", dict(tie_word_embeddings=True, rope_theta=1e6)),
    "mistral_window": ("MistralForCausalLM", dict(sliding_window=8, rope_theta=1e4)),
    "llama31_rope": ("LlamaForCausalLM", dict(rope_theta=5e5, rope_scaling=LLAMA31_ROPE)),
    "llama_linear_rope": ("LlamaForCausalLM", dict(rope_scaling={"rope_type": "linear",
                                                                 "factor": 4.0})),
}


def hf_model(name, seed=0):
    """A random tiny HF model of a family, with non-trivial norms and biases."""
    architecture, extra = FAMILIES[name]
    model_type = {"Qwen2ForCausalLM": "qwen2", "MistralForCausalLM": "mistral",
                  "LlamaForCausalLM": "llama"}[architecture]
    extra = json.loads(json.dumps(extra))  # transformers edits the rope dict it is given
    hf_config = transformers.AutoConfig.for_model(model_type, **SHAPE, **extra)
    hf_config.architectures = [architecture]
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(hf_config).eval()
    with torch.no_grad():  # a dropped bias or a swapped norm must show in the logits
        for param_name, p in model.named_parameters():
            if "norm" in param_name:
                p.uniform_(0.5, 1.5)
            elif param_name.endswith("bias"):
                p.normal_(0.0, 0.5)
    return model


def our_model(hf):
    config = config_from_hf(hf.config.to_dict())
    ours = tencentpretrain.build_model(config, VOCAB).eval()
    ours.load_state_dict(hf_to_tencentpretrain(hf.state_dict(), config),
                         strict=not config.tie_weights)
    if config.tie_weights:
        ours.target.lm.output_layer.weight = ours.embedding.word.embedding.weight
    return config, ours


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    hf = hf_model(request.param)
    config, ours = our_model(hf)
    return request.param, hf, config, ours


def test_config_carries_what_sets_the_family_apart(family):
    name, hf, config, ours = family
    expected = {"qwen2_tied": dict(qkv_bias=True, tie_weights=True, rope_theta=1e6),
                "mistral_window": dict(sliding_window=8, qkv_bias=False),
                "llama31_rope": dict(rope_scaling=LLAMA31_ROPE, rope_theta=5e5),
                "llama_linear_rope": dict(rope_scaling={"rope_type": "linear", "factor": 4.0})}
    for key, value in expected[name].items():
        assert getattr(config, key) == value, key
    assert sum(p.numel() for p in ours.parameters()) == hf.num_parameters()


def test_logits_equal_transformers(family):
    name, hf, config, ours = family
    input_ids = torch.randint(0, VOCAB, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(input_ids).logits
        got = ours(input_ids)
    assert (got - expected).abs().max().item() <= 1e-5
    if name != "qwen2_tied":  # the feature matters: without it the logits differ
        plain = config_from_dict({**{k: getattr(config, k) for k in (
            "emb_size", "hidden_size", "feedforward_size", "heads_num", "layers_num",
            "max_seq_length", "local_kv_heads_num", "rope_theta", "layernorm_eps")}})
        without = tencentpretrain.build_model(plain, VOCAB).eval()
        without.load_state_dict(ours.state_dict())
        with torch.no_grad():
            assert (without(input_ids) - expected).abs().max().item() > 1e-3


def test_dropped_qkv_bias_would_show():
    hf = hf_model("qwen2_tied")
    config, ours = our_model(hf)
    x = torch.randint(0, VOCAB, (1, 23), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = hf(x).logits
        ours.encoder.transformer[0].self_attn.linear_layers[1].bias.zero_()
        assert (ours(x) - reference).abs().max().item() > 1e-3


def test_hf_round_trip_is_identical(family):
    name, hf, config, _ = family
    hf_state = hf.state_dict()
    back = tencentpretrain_to_hf(hf_to_tencentpretrain(hf_state, config), config)
    expected = set(hf_state) - ({"lm_head.weight"} if config.tie_weights else set())
    assert set(back) == expected
    for tensor_name, tensor in back.items():
        assert torch.equal(tensor, hf_state[tensor_name]), tensor_name


def test_greedy_with_kv_cache_equals_transformers(family):
    name, hf, config, ours = family
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, VOCAB, (length,), generator=generator).tolist()
               for length in (20, 13, 27)]
    got = generate(ours, prompts, 16, options=SamplingOptions(top_k=1))  # left-padded batch
    for prompt, ours_new in zip(prompts, got):
        ids = torch.tensor([prompt])
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
        assert ours_new == out[0, len(prompt):].tolist()


def test_sliding_window_masks_old_positions():
    config = config_from_dict(dict(emb_size=64, hidden_size=64, feedforward_size=128,
                                   heads_num=4, layers_num=1, max_seq_length=64,
                                   sliding_window=4))
    from tencentpretrain.layers.masks import causal_mask
    mask, is_causal = causal_mask(1, 6, device="cpu", window=config.sliding_window)
    assert not is_causal
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0],
                                         [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0],
                                         [0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    # a cached step at position 6 sees positions 3..6 only
    step, _ = causal_mask(1, 1, past=6, device="cpu", window=4)
    assert step[0, 0].int().tolist() == [[0, 0, 0, 1, 1, 1, 1]]
    assert causal_mask(1, 4, device="cpu", window=4) == (None, True)  # fits: flash path kept


def run_script(name, capsys, *args):
    """scripts/``name`` with ``args``, in this process: (exit status, stdout, stderr)."""
    return run_tool("scripts/" + name, args, capsys)


@pytest.mark.parametrize("name", ["qwen2_tied", "mistral_window", "llama31_rope"])
def test_conversion_scripts_round_trip_sharded(tmp_path, name, capsys):
    """Sharded safetensors with an index (and a stray consolidated file beside them, as hub
    Mistral folders have) -> ours -> an HF folder that transformers reloads identically."""
    hf = hf_model(name, seed=4).to(torch.bfloat16)
    hf_dir = tmp_path / "hf"
    hf.save_pretrained(hf_dir, max_shard_size="40KB")
    assert (hf_dir / "model.safetensors.index.json").is_file()
    from safetensors.torch import save_file
    save_file({"stray": torch.zeros(2)}, str(hf_dir / "consolidated.safetensors"))
    ours_path, cfg_path = tmp_path / "ours.safetensors", tmp_path / "cfg.json"
    status, _, err = run_script("convert_llama_from_huggingface_to_tencentpretrain.py", capsys,
                                "--input_model_path", hf_dir, "--output_model_path", ours_path,
                                "--output_config_path", cfg_path)
    assert status == 0, err
    from tencentpretrain.utils.weights import load_state_dict_file
    assert {t.dtype for t in load_state_dict_file(str(ours_path)).values()} == {torch.bfloat16}
    tencentpretrain.load_model(str(cfg_path), str(ours_path), device="meta")  # shapes fit
    out_dir = tmp_path / "hf_again"
    status, _, err = run_script("convert_tencentpretrain_to_llama_huggingface.py", capsys,
                                "--input_model_path", ours_path, "--config_path", cfg_path,
                                "--output_model_path", out_dir)
    assert status == 0, err
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out_dir).eval()
    assert type(reloaded) is type(hf)
    original = hf.state_dict()
    assert set(reloaded.state_dict()) == set(original)
    for tensor_name, tensor in reloaded.state_dict().items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, original[tensor_name])
    x = torch.randint(0, VOCAB, (1, 37), generator=torch.Generator().manual_seed(5))
    source = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():  # the exported config (window, rope scaling) computes the same
        assert torch.equal(reloaded(x).logits, source(x).logits)


@pytest.mark.parametrize("path,vocab,count", [
    ("models/qwen2.5/0.5b_config.json", 151936, 494_032_768),
    ("models/qwen2.5/1.5b_config.json", 151936, 1_543_714_304),
    ("models/qwen2.5/7b_config.json", 152064, 7_615_616_512),
    ("models/llama3/8b_config.json", 128256, 8_030_261_248),
    ("models/llama3.1/8b_config.json", 128256, 8_030_261_248),
    ("models/mistral/7b_config.json", 32000, 7_241_732_096),
])
def test_shipped_configs_have_the_published_sizes(path, vocab, count):
    model = tencentpretrain.build_model(os.path.join(ROOT, path), vocab, device="meta")
    assert sum(p.numel() for p in model.parameters()) == count


def test_shipped_configs_export_to_their_family():
    families = {"qwen2.5/7b": "Qwen2ForCausalLM", "llama3.1/8b": "LlamaForCausalLM",
                "mistral/7b": "MistralForCausalLM"}
    for stem, architecture in families.items():
        config = load_config(os.path.join(ROOT, "models", f"{stem}_config.json"))
        hf = config_to_hf(config, 1000)
        assert hf["architectures"] == [architecture]
        assert config_from_hf(hf) == config.__class__(**{**config.__dict__,
                                                         "source": "Hugging Face config.json"})


def qwen2_config(**changes):
    hf = hf_model("qwen2_tied").config.to_dict()
    hf.update(changes)
    return hf


@pytest.mark.parametrize("changes,message", [
    (dict(architectures=["GemmaForCausalLM"]), "architectures ['GemmaForCausalLM'] not supported"),
    (dict(use_sliding_window=True), "use_sliding_window"),
    (dict(head_dim=32), "head_dim 32"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_type 'yarn' is not supported"),
    (dict(rope_parameters={"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}),
     'needs a positive number "low_freq_factor"'),
    (dict(hidden_act="gelu_new"), 'unknown hidden_act "gelu_new"'),
])
def test_converter_refuses_what_it_does_not_understand(changes, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        config_from_hf(qwen2_config(**changes))


def test_llama_with_attention_bias_is_refused():
    hf = hf_model("llama31_rope").config.to_dict()
    hf["attention_bias"] = True
    with pytest.raises(ConfigError, match="attention_bias=true is not supported"):
        config_from_hf(hf)


def test_unplaced_tensor_is_refused_not_dropped():
    hf = hf_model("mistral_window")
    config = config_from_hf(hf.config.to_dict())
    state = dict(hf.state_dict())
    state["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(64)
    with pytest.raises(WeightsError, match="model.layers.0.self_attn.o_proj.bias has no place"):
        hf_to_tencentpretrain(state, config)


def test_script_refuses_qwen2_folder_with_sliding_window_in_one_line(tmp_path, capsys):
    hf = hf_model("qwen2_tied")
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["use_sliding_window"] = True
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    status, _, err = run_script("convert_llama_from_huggingface_to_tencentpretrain.py", capsys,
                                "--input_model_path", tmp_path / "hf",
                                "--output_model_path", tmp_path / "out.bin")
    assert status == 2
    assert err.strip().count("\n") == 0 and "use_sliding_window" in err
    assert not (tmp_path / "out.bin").exists()


@pytest.mark.parametrize("scaling,message", [
    ({"rope_type": "dynamic", "factor": 2.0}, "rope_type 'dynamic' is not supported"),
    ({"rope_type": "linear"}, 'needs a positive number "factor"'),
    ({"rope_type": "linear", "factor": 2.0, "beta": 1}, 'unknown key "beta"'),
    ("llama3", "must be an object or null"),
])
def test_bad_rope_scaling_in_our_config(scaling, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(dict(emb_size=64, hidden_size=64, feedforward_size=128, heads_num=4,
                              layers_num=1, max_seq_length=64, rope_scaling=scaling),
                         source="cfg.json")


@pytest.mark.parametrize("features", [
    dict(qkv_bias=True, tie_weights=True, rope_theta=1e6),
    dict(sliding_window=16, rope_scaling=LLAMA31_ROPE, local_kv_heads_num=2, rope_theta=5e5),
])
def test_training_the_new_features_then_exporting(tmp_path, features):
    """pretrain.py trains a Qwen2-like / Mistral-like config (window 16 < seq_length 64, scaled
    RoPE), the loss falls, and transformers computes the trained model's logits."""
    from tencentpretrain.config import save_config
    from tests.training_support import logged_losses, pretrain_argv, run_in_process
    tiny = load_config(os.path.join(ROOT, "models", "llama", "tiny_config.json"))
    config = tiny.__class__(**{**tiny.__dict__, **features})
    save_config(config, str(tmp_path / "config.json"))
    output = str(tmp_path / "model.bin")
    argv = pretrain_argv(output, steps=16, save=16)
    argv[argv.index("--learning_rate") + 1] = "3e-3"
    argv[argv.index("--config_path") + 1] = str(tmp_path / "config.json")
    import contextlib
    import io
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        run_in_process(argv)
    losses = logged_losses(log.getvalue())
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (14, 15, 16)) / 3
    assert last < first - 0.5, losses
    config = load_config(str(tmp_path / "config.json"))
    model = tencentpretrain.load_model(config, output)
    vocab = model.vocab_size
    hf_config = transformers.AutoConfig.for_model(**config_to_hf(config, vocab))
    hf = getattr(transformers, hf_config.architectures[0])(hf_config).eval()
    hf.load_state_dict(tencentpretrain_to_hf(model.state_dict(), config), strict=False)
    if config.tie_weights:
        hf.tie_weights()
    x = torch.randint(0, vocab, (2, 64), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() <= 1e-5
