"""Bad configs fail with one line naming the key, the value, the file and the choices."""
import collections
import json
import os

import pytest

import tencentpretrain
from tencentpretrain import ConfigError, WeightsError
from tests.conftest import ROOT

TINY = os.path.join(ROOT, "models/llama/tiny_config.json")


def write_config(tmp_path, **changes):
    raw = json.loads(open(TINY).read())
    for key, value in changes.items():
        if value is KeyError:
            del raw[key]
        else:
            raw[key] = value
    path = tmp_path / "x.json"
    path.write_text(json.dumps(raw))
    return str(path)


@pytest.mark.parametrize("key,value,message", [
    ("encoder", "transfromer", 'unknown encoder "transfromer" in {}; known: transformer'),
    ("embedding", ["word", "pos"], 'unknown embedding "pos" in {}; known: word'),
    ("target", ["mlm"], 'unknown target "mlm" in {}; known: lm'),
    ("layernorm", "rmsnorm", 'unknown layernorm "rmsnorm" in {}; known: normal, rms'),
    ("feed_forward", "swiglu", 'unknown feed_forward "swiglu" in {}; known: dense, gated'),
    ("mask", "fully", 'unknown mask "fully" in {}; known: causal, causal_document, fully_visible'),
    ("hidden_act", "swish", 'unknown hidden_act "swish" in {}; known: gelu, gelu_fast, relu, silu'),
    ("decoder", "transfromer", 'unknown decoder "transfromer" in {}; known: transformer'),
])
def test_unknown_module_names(tmp_path, key, value, message):
    path = write_config(tmp_path, **{key: value})
    with pytest.raises(ConfigError) as e:
        tencentpretrain.build_model(path, 100)
    assert str(e.value) == message.format(path)


def test_missing_required_key(tmp_path):
    path = write_config(tmp_path, heads_num=KeyError)
    with pytest.raises(ConfigError, match=f'^missing required key "heads_num" in {path}$'):
        tencentpretrain.load_config(path)


@pytest.mark.parametrize("key,value,expected", [
    ("hidden_size", "64", "an integer"), ("layers_num", 2.5, "an integer"),
    ("rotary_position_embedding", "yes", "true or false"), ("dropout", "0.1", "a number"),
    ("encoder", 3, "a string"), ("layers_num", 0, "a positive integer"),
    ("target", [1], "a list of strings"),
])
def test_wrong_types(tmp_path, key, value, expected):
    path = write_config(tmp_path, **{key: value})
    with pytest.raises(ConfigError) as e:
        tencentpretrain.load_config(path)
    assert str(e.value) == f'"{key}" in {path} must be {expected}, got {value!r}'


def test_unknown_key_and_bad_shapes(tmp_path):
    with pytest.raises(ConfigError, match='unknown key "hiden_size"'):
        tencentpretrain.load_config(write_config(tmp_path, hiden_size=3))
    with pytest.raises(ConfigError, match='"heads_num" 4 is not divisible by "local_kv_heads_num" 3'):
        tencentpretrain.load_config(write_config(tmp_path, local_kv_heads_num=3))
    with pytest.raises(ConfigError, match='not divisible by "heads_num" 5'):
        tencentpretrain.load_config(write_config(tmp_path, heads_num=5))


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        tencentpretrain.load_config(str(tmp_path / "nope.json"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"emb_size": 64,\n "hidden_size": }')
    with pytest.raises(ConfigError, match=rf"^{broken}:2: invalid JSON"):
        tencentpretrain.load_config(str(broken))


def test_errors_come_before_allocation(tmp_path, monkeypatch):
    from tencentpretrain.models import model as model_module
    monkeypatch.setattr(model_module.Model, "__init__", lambda *a, **k: pytest.fail("allocated"))
    with pytest.raises(ConfigError):
        tencentpretrain.build_model(write_config(tmp_path, encoder="nope"), 100)


def test_weights_mismatch_names_tensor_and_shapes(tmp_path):
    import torch
    model = tencentpretrain.build_model(TINY, 100)
    state = model.state_dict()
    state["encoder.transformer.1.feed_forward.linear_1.weight"] = torch.zeros(100, 64)
    torch.save(state, tmp_path / "w.bin")
    with pytest.raises(WeightsError) as e:
        tencentpretrain.load_model(TINY, str(tmp_path / "w.bin"))
    assert "tensor encoder.transformer.1.feed_forward.linear_1.weight has shape (100, 64)" in str(e.value)
    assert "expects (172, 64)" in str(e.value)


def test_pickled_objects_are_refused(tmp_path):
    import torch

    torch.save({"x": collections.OrderedDict(a=slice(1, 2))}, tmp_path / "evil.bin")
    with pytest.raises(WeightsError) as e:
        tencentpretrain.load_model(TINY, str(tmp_path / "evil.bin"))
    assert str(e.value) == (f"{tmp_path / 'evil.bin'}: a pickle that needs code execution to "
                            "load; only plain state dicts of tensors are read")
    (tmp_path / "text.bin").write_text("hello")
    with pytest.raises(WeightsError, match="not a weights file"):
        tencentpretrain.load_model(TINY, str(tmp_path / "text.bin"))


def test_bin_and_safetensors_reload_bit_identically(tmp_path):
    import torch
    from tencentpretrain.utils.weights import save_state_dict_file
    model = tencentpretrain.build_model(TINY, 100)
    for name in ("w.bin", "w.safetensors"):
        save_state_dict_file(model.state_dict(), str(tmp_path / name))
        loaded = tencentpretrain.load_model(TINY, str(tmp_path / name))
        for key, tensor in model.state_dict().items():
            assert torch.equal(tensor, loaded.state_dict()[key])
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_load_model_follows_the_default_device(tmp_path):
    """No device given: torch's default device decides, so a 7B model on the meta device
    allocates nothing (the old device="cpu" default would have allocated 27 GB)."""
    import torch

    seven_b = os.path.join(ROOT, "models/llama/7b_config.json")
    with torch.device("meta"):
        model = tencentpretrain.load_model(seven_b, vocab_size=32000)
    assert model.embedding.word.embedding.weight.is_meta
    assert sum(p.numel() for p in model.parameters()) == 6_738_415_616  # LLaMA-7B
    small = tencentpretrain.build_model(TINY, 100)
    torch.save(small.state_dict(), tmp_path / "tiny.bin")
    with torch.device("meta"):
        checked = tencentpretrain.load_model(TINY, str(tmp_path / "tiny.bin"))
    assert checked.target.lm.output_layer.weight.is_meta and checked.vocab_size == 100
    loaded = tencentpretrain.load_model(TINY, str(tmp_path / "tiny.bin"))
    assert torch.equal(loaded.target.lm.output_layer.weight, small.target.lm.output_layer.weight)


@pytest.mark.parametrize("targets", [["lm", "lm"], []])  # unknown names: the registry
def test_targets_other_than_lm_alone_are_refused(tmp_path, targets):
    config = json.load(open(TINY))
    config["target"] = targets
    path = tmp_path / "targets.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r'"target" in .*targets\.json is .*exactly one target'):
        tencentpretrain.build_model(str(path), 100, device="meta")


@pytest.mark.parametrize("name", ["w.safetensors", "w.bin"])
def test_saved_weights_follow_the_umask(tmp_path, name):
    import torch
    from tencentpretrain.utils.weights import save_state_dict_file
    old = os.umask(0o022)
    try:
        save_state_dict_file({"a": torch.zeros(2)}, str(tmp_path / name))
    finally:
        os.umask(old)
    assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644
