"""Export guards (issue 25, faults 4, 5, 6, 8 and export hygiene): a config that does not fit
the weights, an output folder holding an older export, damaged or poisoned torch files, and a
SentencePiece model that normalizes (nmt_nfkc) are each one line, exit 2, nothing written; the
tokenizer the export writes gives the training ids."""
import io
import json
import os

import pytest
import torch

import tencentpretrain
from tencentpretrain.config import load_config
from tencentpretrain.convert.hf_llama import read_hf_folder, tencentpretrain_to_hf
from tencentpretrain.tokenizer import SpmTokenizer
from tencentpretrain.utils.weights import WeightsError, load_state_dict_file, save_state_dict_file
from tests.conftest import ROOT

TINY = os.path.join(ROOT, "models", "llama", "tiny_config.json")
TINY_GQA = os.path.join(ROOT, "models", "llama", "tiny_gqa_config.json")
VOCAB = 320


def one_line_error(main, argv, capsys):
    """The one ``error: ...`` line a script's ``main(argv)`` ends with (exit status 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    # The budget is for the message: the paths the user typed are theirs, of any length.
    words = [str(a) for a in argv if os.path.sep in str(a)]
    assert len(lines[0]) - sum(len(w) for w in words if w in lines[0]) <= 260, lines[0]
    return lines[0]


def tiny_weights(path, config=TINY, vocab=VOCAB):
    torch.manual_seed(0)
    save_state_dict_file(tencentpretrain.build_model(config, vocab).state_dict(), str(path))
    return str(path)


def export(weights, out, config=TINY, *extra):
    from scripts.convert_tencentpretrain_to_llama_huggingface import main
    main([str(a) for a in ["--input_model_path", weights, "--config_path", config,
                           "--output_model_path", out, *extra]])


# 4. a config that does not fit the weights


def test_export_refuses_a_config_that_does_not_fit_the_weights(tmp_path, capsys):
    from scripts.convert_tencentpretrain_to_llama_huggingface import main
    weights = tiny_weights(tmp_path / "tiny.bin")
    out = tmp_path / "hf"
    line = one_line_error(main, ["--input_model_path", weights, "--config_path", TINY_GQA,
                                 "--output_model_path", out], capsys)
    assert weights in line and "encoder.transformer.0.self_attn.linear_layers.1.weight" in line
    assert "(64, 64)" in line and "(16, 64)" in line, line
    assert not out.exists()
    # a tensor the config does not have (here: more layers in the weights than in the config)
    config = json.load(open(TINY))
    config["layers_num"] = 1
    (tmp_path / "one_layer.json").write_text(json.dumps(config))
    line = one_line_error(main, ["--input_model_path", weights, "--config_path",
                                 tmp_path / "one_layer.json", "--output_model_path", out], capsys)
    assert "unexpected tensor encoder.transformer.1." in line and not out.exists()


# 5. an output folder holding an older export; a folder with both a file and an index


def sharded_export(folder, vocab=500):
    """An older export in ``folder``: config.json, an index and one shard (vocab 500)."""
    os.makedirs(folder)
    state = tencentpretrain_to_hf(tencentpretrain.build_model(TINY, vocab).state_dict(),
                                  load_config(TINY))
    save_state_dict_file(state, os.path.join(folder, "model-00001-of-00001.safetensors"))
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": {
            name: "model-00001-of-00001.safetensors" for name in state}}, f)
    return sorted(os.listdir(folder))


def test_export_refuses_a_folder_holding_an_older_export(tmp_path, capsys):
    from scripts.convert_tencentpretrain_to_llama_huggingface import main
    weights = tiny_weights(tmp_path / "tiny.bin", vocab=32000)
    out = str(tmp_path / "hf")
    before = sharded_export(out)
    line = one_line_error(main, ["--input_model_path", weights, "--config_path", TINY,
                                 "--output_model_path", out], capsys)
    assert out in line and "model-00001-of-00001.safetensors" in line and "weight files" in line
    assert sorted(os.listdir(out)) == before  # nothing written, nothing removed
    # other files in the folder are fine
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "README.md").write_text("notes")
    export(weights, str(fresh))
    _, state = read_hf_folder(str(fresh))
    assert tuple(state["model.embed_tokens.weight"].shape) == (32000, 64)


def test_hf_reader_refuses_a_single_file_beside_an_index(tmp_path):
    weights = tiny_weights(tmp_path / "tiny.bin", vocab=32000)
    out = str(tmp_path / "hf")
    export(weights, out)
    stale = sharded_export(str(tmp_path / "old"))
    for name in stale:  # what an export over an older sharded one used to leave
        os.replace(os.path.join(tmp_path, "old", name), os.path.join(out, name))
    with pytest.raises(WeightsError) as e:
        read_hf_folder(out)
    message = str(e.value)
    assert "model.safetensors" in message and "model.safetensors.index.json" in message
    assert len(message.splitlines()) == 1


def test_peft_export_refuses_a_folder_holding_weights(tmp_path, capsys):
    from scripts.convert_lora_to_peft import main
    from tencentpretrain.adapters import save_adapter
    from tencentpretrain.layers.lora import LoraConfig, adapter_names, inject_lora
    model = tencentpretrain.build_model(TINY, VOCAB)
    lora = LoraConfig(r=4, alpha=8)
    inject_lora(model, lora)
    state = dict(model.named_parameters())
    adapter = save_adapter(str(tmp_path / "adapter"), lora,
                           {n: state[n].detach().clone() for n in adapter_names(model)})
    out = tmp_path / "peft"
    out.mkdir()
    (out / "adapter_model.bin").write_bytes(b"old")
    line = one_line_error(main, ["--input_model_path", adapter, "--config_path", TINY,
                                 "--output_model_path", out], capsys)
    assert str(out) in line and "adapter_model.bin" in line
    assert os.listdir(out) == ["adapter_model.bin"]
    (out / "adapter_model.bin").unlink()
    (out / "notes.txt").write_text("kept")
    main(["--input_model_path", adapter, "--config_path", TINY, "--output_model_path", str(out)])
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors",
                                       "notes.txt"]


# 6. truncated and poisoned torch files


class _Payload:
    """Pickles as a call of os.system; weights_only loading must refuse it unrun."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def truncated(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
    return str(path)


def test_truncated_and_poisoned_training_states_are_one_line_in_our_words(tmp_path):
    states = tmp_path / "global_step2" / "training_states.pt"
    states.parent.mkdir()
    torch.save({"optimizer": {"state": {0: {"exp_avg": torch.zeros(64, 64)}}}, "step": 2},
               states)
    assert load_state_dict_file(str(states), tensors_only=False)["step"] == 2
    truncated(states)
    with pytest.raises(WeightsError) as e:
        load_state_dict_file(str(states), tensors_only=False)
    message = str(e.value)
    assert message.startswith(f"{states}: truncated or corrupt training-state file"), message
    assert len(message) <= 300 and "\n" not in message and "miniz" not in message
    marker = tmp_path / "PWNED"
    torch.save({"optimizer": {}, "step": _Payload(marker)}, states)
    with pytest.raises(WeightsError) as e:
        load_state_dict_file(str(states), tensors_only=False)
    message = str(e.value)
    assert message.startswith(f"{states}: a pickle that needs code execution"), message
    assert "system" in message and "training-state file" in message and "weights_only" in message
    assert len(message) <= 300 and "\n" not in message and "PyTorch 2.6" not in message
    assert not marker.exists()  # the payload never ran


def test_extend_vocab_refuses_a_truncated_checkpoint_in_one_line(tmp_path, capsys, nfkc_spm):
    from scripts.extend_vocab import main
    spm_model = nfkc_spm
    weights = tiny_weights(tmp_path / "tiny.bin", vocab=SpmTokenizer(spm_model).vocab_size)
    truncated(weights)
    out = tmp_path / "extended.bin"
    line = one_line_error(main, ["--input_model_path", weights, "--config_path", TINY,
                                 "--base_spm_model_path", spm_model, "--spm_model_path",
                                 spm_model, "--output_model_path", out], capsys)
    assert line.startswith(f"error: {weights}: truncated or corrupt weights file"), line
    assert "miniz" not in line and not out.exists()
    marker = tmp_path / "PWNED"
    torch.save({"embedding.word.embedding.weight": _Payload(marker)}, weights)
    line = one_line_error(main, ["--input_model_path", weights, "--config_path", TINY,
                                 "--base_spm_model_path", spm_model, "--spm_model_path",
                                 spm_model, "--output_model_path", out], capsys)
    assert "a pickle that needs code execution" in line and not marker.exists()


# 8. a SentencePiece model that normalizes: the export gives the training ids

NFKC_LINES = [
    "北京是中国的首都，上海是中国的经济中心。",
    "今天天气很好！我们去公园散步吧？",
    "价格：１２３４元，数量：５６个。",
    "Hello, world! This is a test of the tokenizer.",
    "第一段\n\n第二段，全角数字０１２３４５６７８９。",
    "混合 text：GPU 显存 24GB，价格 ￥1999！",
    "“引号”和（括号）以及【方括号】。",
] * 20


@pytest.fixture(scope="module")
def nfkc_spm(tmp_path_factory):
    """A tiny BPE SentencePiece model with the default nmt_nfkc rule, LLaMA's special layout."""
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(NFKC_LINES), model_writer=model, vocab_size=400,
        model_type="bpe", character_coverage=1.0, byte_fallback=True, unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, normalization_rule_name="nmt_nfkc", minloglevel=2)
    path = tmp_path_factory.mktemp("nfkc") / "nfkc.model"
    path.write_bytes(model.getvalue())
    return str(path)


NFKC_TEXTS = ["你好，世界！", "第一段\n\n第二段", "全角数字１２３ and ４５６。", "a  b\t\tc  ",
              "  leading", "（括号）：；", "Ｈｅｌｌｏ", "\n\n", ""]


def test_export_of_an_nfkc_tokenizer_gives_the_training_ids(tmp_path, nfkc_spm):
    transformers = pytest.importorskip("transformers")
    sp = SpmTokenizer(nfkc_spm)
    assert sp.encode("，") == sp.encode(",")  # the model does normalize
    weights = tiny_weights(tmp_path / "tiny.bin", vocab=sp.vocab_size)
    out = str(tmp_path / "hf")
    export(weights, out, TINY, "--spm_model_path", nfkc_spm)
    hf = transformers.AutoTokenizer.from_pretrained(out)
    for text in NFKC_TEXTS + NFKC_LINES[:7]:
        assert hf(text)["input_ids"] == [sp.bos_id] + sp.encode(text), repr(text)
    assert hf.decode(hf("你好，世界")["input_ids"], skip_special_tokens=True) == "你好,世界"


def test_a_tokenizer_hf_cannot_reproduce_is_refused_with_nothing_written(
        tmp_path, chinese_spm, capsys):
    """The shared unigram model: tokenizers' Viterbi breaks ties between equal-score
    segmentations differently from SentencePiece's on a run of one character."""
    from scripts.convert_tencentpretrain_to_llama_huggingface import main
    weights = tiny_weights(tmp_path / "tiny.bin", vocab=SpmTokenizer(chinese_spm).vocab_size)
    check = tmp_path / "check.txt"
    check.write_text("好" * 20 + "\n", encoding="utf-8")
    out = tmp_path / "hf"
    line = one_line_error(main, ["--input_model_path", weights, "--config_path", TINY,
                                 "--output_model_path", out, "--spm_model_path", chinese_spm,
                                 "--tokenizer_check_path", check], capsys)
    assert chinese_spm in line and "other ids than SentencePiece" in line and "好" in line
    assert not out.exists()
