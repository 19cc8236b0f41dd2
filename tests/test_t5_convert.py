"""scripts/convert_t5_*: Hugging Face T5 folders (sharded safetensors with an index, as
transformers saves them) -> ours -> Hugging Face, for tied original T5 and untied v1.1;
transformers loads the export and its logits equal ours; the tokenizer files give the
seq2seq ids (text + eos); generation_config starts the decoder at pad; the LLaMA export's
guards refuse a folder holding weights and weights that do not fit the config."""
import json
import os

import pytest
import torch

import tencentpretrain
from tencentpretrain.config import load_config
from tencentpretrain.models import layout
from tencentpretrain.tokenizer import SpmTokenizer
from tencentpretrain.utils.weights import load_state_dict_file
from tests.conftest import ROOT
from tests.test_export_guards import one_line_error
from tests.test_t5 import SRC, SRC_MASK, TGT, TINY, hf_t5
from tests.training_support import LLAMA_SPM

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("name", list(TINY))
def test_hf_to_ours_to_hf_round_trip_and_transformers_loads_the_export(name, tmp_path):
    from scripts.convert_t5_from_huggingface_to_tencentpretrain import main as to_ours
    from scripts.convert_t5_from_tencentpretrain_to_huggingface import main as to_hf
    hf = hf_t5(name)
    hf_dir = tmp_path / "hf"
    hf.save_pretrained(hf_dir, max_shard_size="100KB")  # sharded, with an index
    assert (hf_dir / "model.safetensors.index.json").is_file()
    ours_path, config_path = tmp_path / "t5.safetensors", tmp_path / "t5_config.json"
    to_ours(["--input_model_path", str(hf_dir), "--output_model_path", str(ours_path),
             "--output_config_path", str(config_path)])
    config = load_config(str(config_path))
    assert config.tie_weights == TINY[name]["tie_word_embeddings"]
    state = load_state_dict_file(str(ours_path))
    ours = tencentpretrain.build_model(config, TINY[name]["vocab_size"]).eval()
    ours.load_state_dict(state, strict=not config.tie_weights)
    if config.tie_weights:
        layout.tie_weights(ours)
    with torch.no_grad():
        expected = hf(input_ids=SRC, attention_mask=SRC_MASK.long(), decoder_input_ids=TGT).logits
        got = ours(SRC, key_mask=SRC_MASK, tgt_ids=TGT)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

    out = tmp_path / "export"
    to_hf(["--input_model_path", str(ours_path), "--config_path", str(config_path),
           "--output_model_path", str(out), "--spm_model_path", LLAMA_SPM])
    exported = load_state_dict_file(str(out / "model.safetensors"))
    original = {k: v for k, v in hf.state_dict().items()
                if k not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
                and not (config.tie_weights and k == "lm_head.weight")}
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)
    back = transformers.T5ForConditionalGeneration.from_pretrained(str(out)).eval()
    with torch.no_grad():
        logits = back(input_ids=SRC, attention_mask=SRC_MASK.long(), decoder_input_ids=TGT).logits
    torch.testing.assert_close(logits, got, rtol=0, atol=1e-5)
    # tokenizer: the ids the seq2seq processors give a source; decoder starts at pad
    spm = SpmTokenizer(LLAMA_SPM)
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "Translate: the quick brown fox. 北京是中国的首都。"
    assert list(tok(text)["input_ids"]) == spm.encode(text) + [spm.eos_id]
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["decoder_start_token_id"] == spm.pad_id
    assert generation["eos_token_id"] == spm.eos_id
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["decoder_start_token_id"] == spm.pad_id == hf_config["pad_token_id"]


def test_t5_export_guards(tmp_path, capsys):
    from scripts.convert_t5_from_huggingface_to_tencentpretrain import main as to_ours
    from scripts.convert_t5_from_tencentpretrain_to_huggingface import main as to_hf
    hf_dir = tmp_path / "hf"
    hf_t5("v1_1").save_pretrained(hf_dir)
    ours_path, config_path = tmp_path / "t5.bin", tmp_path / "t5_config.json"
    to_ours([str(a) for a in ["--input_model_path", hf_dir, "--output_model_path", ours_path,
                              "--output_config_path", config_path]])
    # an output folder already holding weights
    line = one_line_error(to_hf, ["--input_model_path", ours_path, "--config_path", config_path,
                                  "--output_model_path", hf_dir], capsys)
    assert "already holds weight files" in line
    # weights that do not fit the config: nothing written
    raw = json.loads(config_path.read_text())
    raw["decoder_layers_num"] = raw["decoder_layers_num"] + 1
    (tmp_path / "deeper.json").write_text(json.dumps(raw))
    out = tmp_path / "out"
    line = one_line_error(to_hf, ["--input_model_path", ours_path, "--config_path",
                                  tmp_path / "deeper.json", "--output_model_path", out], capsys)
    assert "missing tensor" in line and not out.exists()
    # a decoder-only config; a LLaMA folder given to the T5 importer
    line = one_line_error(to_hf, ["--input_model_path", ours_path, "--config_path",
                                  os.path.join(ROOT, "models/llama/tiny_config.json"), "--output_model_path", out],
                          capsys)
    assert "names no decoder" in line and not out.exists()
    raw = json.loads((hf_dir / "config.json").read_text())
    raw.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (hf_dir / "config.json").write_text(json.dumps(raw))
    line = one_line_error(to_ours, ["--input_model_path", hf_dir, "--output_model_path",
                                    tmp_path / "x.bin"], capsys)
    assert "not a T5 config" in line
