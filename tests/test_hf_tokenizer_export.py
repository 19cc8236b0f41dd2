"""The HF export's tokenizer gives the ids training used: AutoTokenizer == [bos] + sp.encode."""
import json
import os

import pytest
import sentencepiece as spm

import tencentpretrain
from tencentpretrain.convert.hf_tokenizer import write_hf_tokenizer
from tencentpretrain.utils.weights import save_state_dict_file
from tests.training_support import TINY
from tests.vocab_support import english_texts, held_out_chinese, merged_tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = ["Hello world", "北京是中国的首都。", "混合 text: GPU 显存 24GB, 价格 ¥1999!",
         "  two leading spaces", "tabs\tand\nnewlines"]


def assert_hf_ids_equal_sentencepiece(folder, spm_model_path, texts):
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    sp = spm.SentencePieceProcessor(model_file=spm_model_path)
    for text in texts:
        assert hf(text)["input_ids"] == [sp.bos_id()] + sp.encode(text), text


def test_converter_writes_tokenizer_files_that_give_training_ids(tmp_path, llama_spm):
    from scripts.convert_tencentpretrain_to_llama_huggingface import main
    weights = tmp_path / "tiny.bin"
    save_state_dict_file(tencentpretrain.build_model(TINY, 32000).state_dict(), str(weights))
    out = tmp_path / "hf"
    umask = os.umask(0o022)  # shared clusters: every exported file readable by others
    try:
        main(["--input_model_path", str(weights), "--config_path", TINY, "--output_model_path",
              str(out), "--spm_model_path", llama_spm])
    finally:
        os.umask(umask)
    assert {name: os.stat(out / name).st_mode & 0o777 for name in os.listdir(out)} == {
        name: 0o644 for name in ["config.json", "model.safetensors", "tokenizer.model",
                                 "tokenizer.json", "tokenizer_config.json",
                                 "special_tokens_map.json",
                                 "generation_config.json"]}
    texts = TEXTS + held_out_chinese()[:3] + english_texts(3)
    assert_hf_ids_equal_sentencepiece(str(out), llama_spm, texts)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    special = json.loads((out / "special_tokens_map.json").read_text())
    assert special == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def test_hf_tokenizer_agrees_with_sentencepiece_on_the_merged_model(tmp_path):
    _, merged = merged_tokenizer()
    write_hf_tokenizer(merged, str(tmp_path))
    texts = TEXTS + held_out_chinese() + english_texts(20)
    assert_hf_ids_equal_sentencepiece(str(tmp_path), merged, texts)


def test_special_ids_come_from_the_tokenizer(tmp_path, chinese_spm):
    write_hf_tokenizer(chinese_spm, str(tmp_path))  # pad=0 unk=1 bos=2 eos=3
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0}
    assert sorted(os.listdir(tmp_path)) == ["generation_config.json", "special_tokens_map.json",
                                            "tokenizer.json", "tokenizer.model",
                                            "tokenizer_config.json"]


def test_transformers_generate_from_the_export_equals_our_greedy(tmp_path, llama_spm):
    """Serving the export (AutoTokenizer + AutoModelForCausalLM.generate, the export's own
    generation_config) gives the tokens our --greedy generation gives from the same weights."""
    import torch
    from scripts.convert_tencentpretrain_to_llama_huggingface import main
    from tencentpretrain.generation import SamplingOptions, generate
    torch.manual_seed(3)
    model = tencentpretrain.build_model(TINY, 32000)
    model.init_weights(std=0.5)  # large weights: a varied greedy continuation, not one token
    weights = tmp_path / "tiny.bin"
    save_state_dict_file(model.state_dict(), str(weights))
    out = str(tmp_path / "hf")
    main(["--input_model_path", str(weights), "--config_path", TINY, "--output_model_path", out,
          "--spm_model_path", llama_spm])
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ours = tencentpretrain.load_model(TINY, str(weights))
    eos = spm.SentencePieceProcessor(model_file=llama_spm).eos_id()
    for text in ["北京是", "The capital of France is", "混合 text 123"]:
        ids = hf_tokenizer(text, return_tensors="pt")
        served = hf_model.generate(**ids, max_new_tokens=12, do_sample=False)[0].tolist()
        new = served[ids["input_ids"].shape[1]:]
        mine = generate(ours, [ids["input_ids"][0].tolist()], 12, eos_id=eos,
                        options=SamplingOptions(top_k=1))[0]
        assert len(set(new)) > 1 and new[:len(mine)] == mine, text
        assert new[len(mine):] in ([], [eos])  # transformers keeps the EOS it stopped on
