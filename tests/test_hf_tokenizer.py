"""Hugging Face tokenizer.json (--tokenizer_path): byte-level BPE tokenizers trained here with
the `tokenizers` library on ../shared/data, one LLaMA-3-like (its post-processor adds a bos)
and one Qwen2.5-like (no bos, eos <|endoftext|>). Datasets hold exactly the ids `tokenizers`
gives, with bos/eos as the tokenizer's own files say; training, generation, evaluation and the
HF export take the tokenizer; bad paths are one-line errors."""
import json
import os
import shutil

import numpy as np
import pytest
from tokenizers import (Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                        processors, trainers)

from inference import run
from inference.evaluate_ppl import main as evaluate_main
from inference.generate_lm import main as generate_main
from tencentpretrain.data import DatasetError, TokenDataset, preprocess
from inference.text_io import unescape_line
from tencentpretrain.generation import GenerationError, SamplingOptions, TextGenerator
from tencentpretrain.loading import load_model_and_tokenizer
from tencentpretrain.prompts import ALPACA_TEMPLATE, build_prompt
from tencentpretrain.tokenizer import TokenizerError, load_tokenizer
from tests.training_support import TINY, logged_losses, run_in_process

TEXTS = ["Hello world", "北京是中国的首都。", "混合 text: GPU 显存 24GB, 价格 ¥1999!",
         "  two leading spaces", "tabs\tand\nnewlines"]
LLAMA3_SPECIALS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
QWEN_SPECIALS = {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}


def corpus_lines(shared_data):
    with open(os.path.join(shared_data, "CLUECorpusSmall_sampled.txt"), encoding="utf-8") as f:
        chinese = [next(f) for _ in range(300)]
    with open(os.path.join(shared_data, "wiki_demo.txt"), encoding="utf-8") as f:
        english = [next(f) for _ in range(6)]
    return chinese + english


# The pre-tokenizer splits of LLaMA-3 (digits in threes) and Qwen2 (single digits).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


def train_byte_level_bpe(lines, specials, split, bos=None, nfc=False, vocab_size=2000):
    """A tokenizer shaped as LLaMA-3's / Qwen2's tokenizer.json: a regex split then byte-level
    BPE, specials as added tokens, and a TemplateProcessing post-processor putting ``bos`` in
    front when one is given (LLaMA-3); Qwen2 also NFC-normalizes."""
    tokenizer = Tokenizer(models.BPE())
    if nfc:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    steps = [processors.ByteLevel(trim_offsets=False)]
    if bos:
        steps.append(processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tokenizer.token_to_id(bos))]))
    tokenizer.post_processor = processors.Sequence(steps)
    return tokenizer


def write_folder(folder, tokenizer, **files):
    os.makedirs(folder, exist_ok=True)
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    for name, content in files.items():
        with open(os.path.join(folder, name + ".json"), "w", encoding="utf-8") as f:
            json.dump(content, f)
    return folder


@pytest.fixture(scope="module")
def tok(tmp_path_factory, shared_data):
    """Folders: llama3 (template bos + tokenizer_config.json), qwen (no bos; eos and pad in
    tokenizer_config.json), bare_llama3 (only tokenizer.json and generation_config.json),
    big (qwen's with its eos at id 70000, so shards need uint32)."""
    root = tmp_path_factory.mktemp("hf_tokenizers")
    lines = corpus_lines(shared_data)
    llama3 = train_byte_level_bpe(lines, list(LLAMA3_SPECIALS.values()), LLAMA3_SPLIT,
                                  bos=LLAMA3_SPECIALS["bos_token"])
    qwen = train_byte_level_bpe(lines, ["<|endoftext|>"], QWEN_SPLIT, nfc=True)
    folders = {
        "llama3": write_folder(root / "llama3", llama3, tokenizer_config=dict(
            LLAMA3_SPECIALS, tokenizer_class="PreTrainedTokenizerFast")),
        "qwen": write_folder(root / "qwen", qwen, tokenizer_config=dict(
            QWEN_SPECIALS, tokenizer_class="Qwen2Tokenizer")),
        "bare_llama3": write_folder(root / "bare_llama3", llama3, generation_config={
            "eos_token_id": [llama3.token_to_id("<|end_of_text|>"), 5]}),
    }
    big = json.loads(qwen.to_str())
    big["model"]["vocab"]["<|im_end|>"] = 70000
    big["added_tokens"].append({"id": 70000, "content": "<|im_end|>", "single_word": False,
                                "lstrip": False, "rstrip": False, "normalized": False,
                                "special": True})
    folders["big"] = write_folder(root / "big", Tokenizer.from_str(json.dumps(big)),
                                  tokenizer_config={"bos_token": None, "eos_token": "<|im_end|>"})
    return {name: str(path) for name, path in folders.items()}


def run_inference(main, argv):
    """Exit status of an inference script's main, in this process, with its error handling."""
    try:
        run(lambda: main([str(a) for a in argv]))
    except SystemExit as e:
        return e.code
    return 0


def reference(folder):
    """`tokenizers` itself, and the eos the folder's tokenizer_config.json names."""
    tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8") as f:
        eos = tokenizer.token_to_id(json.load(f)["eos_token"])
    return tokenizer, eos


# --- special tokens come from the tokenizer's files -----------------------------------------

def test_special_tokens_come_from_the_files(tok):
    llama3 = load_tokenizer(tokenizer_path=tok["llama3"])
    raw = Tokenizer.from_file(os.path.join(tok["llama3"], "tokenizer.json"))
    assert (llama3.bos_id, llama3.eos_id) == (raw.token_to_id("<|begin_of_text|>"),
                                              raw.token_to_id("<|end_of_text|>"))
    assert llama3.add_bos and llama3.bos_ids == [llama3.bos_id]
    assert llama3.vocab_size == raw.get_vocab_size(with_added_tokens=True) == 2000
    assert llama3.pad_id == llama3.eos_id  # no pad token: eos pads (never stored)
    # no double bos: encode gives the raw ids, the post-processor's bos is ours to add
    assert llama3.bos_ids + llama3.encode("Hello") == raw.encode("Hello").ids

    qwen = load_tokenizer(tokenizer_path=os.path.join(tok["qwen"], "tokenizer.json"))
    raw = Tokenizer.from_file(os.path.join(tok["qwen"], "tokenizer.json"))
    assert qwen.bos_id is None and not qwen.add_bos and qwen.bos_ids == []
    assert qwen.eos_id == qwen.pad_id == raw.token_to_id("<|endoftext|>")

    # no tokenizer_config.json: bos from the template, eos from generation_config.json's list
    bare = load_tokenizer(tokenizer_path=tok["bare_llama3"])
    assert (bare.bos_id, bare.eos_id, bare.add_bos) == (llama3.bos_id, llama3.eos_id, True)
    assert bare.sha256 == llama3.sha256

    big = load_tokenizer(tokenizer_path=tok["big"])
    assert (big.vocab_size, big.eos_id) == (70001, 70000)


def test_batch_and_single_encoding_agree_with_tokenizers(tok):
    hf = load_tokenizer(tokenizer_path=tok["qwen"])
    raw, _ = reference(tok["qwen"])
    expected = [raw.encode(text, add_special_tokens=False).ids for text in TEXTS]
    assert hf.encode_batch(TEXTS) == hf.encode_batch(TEXTS, num_threads=2) == expected
    assert [hf.encode(text) for text in TEXTS] == expected
    assert [hf.decode(ids) for ids in expected] == TEXTS
    assert hf.id_to_piece(expected[0][0]) == raw.id_to_token(expected[0][0])


# --- preprocessing: exactly the ids `tokenizers` gives, 1 or 2 processes ---------------------

@pytest.fixture(scope="module")
def lm_corpus(tmp_path_factory, shared_data):
    path = tmp_path_factory.mktemp("lm_corpus") / "mixed.txt"
    with open(os.path.join(shared_data, "CLUECorpusSmall_sampled.txt"), encoding="utf-8") as f:
        chinese = [next(f) for _ in range(400)][300:]  # not the tokenizers' training lines
    with open(os.path.join(shared_data, "wiki_demo.txt"), encoding="utf-8") as f:
        english = [next(f) for _ in range(9)][6:]
    lines = chinese[:50] + english + ["\n", "   \n"] + chinese[50:]
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("name", ["llama3", "qwen", "big"])
@pytest.mark.parametrize("processes", [1, 2])
def test_lm_dataset_holds_the_ids_tokenizers_gives(tok, lm_corpus, tmp_path, name, processes, capfd):
    preprocess(lm_corpus, None, str(tmp_path / "ds"), seq_length=128, processes_num=processes,
               progress=False, tokenizer_path=tok[name])
    raw, eos = reference(tok[name])
    with open(lm_corpus, encoding="utf-8") as f:
        texts = [line.strip() for line in f if line.strip()]
    # the post-processor adds the bos (llama3) or nothing (qwen); eos as tokenizer_config says
    expected = np.concatenate([raw.encode(text).ids + [eos] for text in texts])
    ds = TokenDataset(str(tmp_path / "ds"))
    np.testing.assert_array_equal(np.concatenate([ds[i].tokens for i in range(len(ds))]), expected)
    assert ds.meta["num_documents"] == len(texts)
    assert ds.meta["dtype"] == ("uint32" if name == "big" else "uint16")
    assert ds.meta["add_bos"] == (name == "llama3")
    assert ds.meta["tokenizer_sha256"] == load_tokenizer(tokenizer_path=tok[name]).sha256
    assert "forked" not in capfd.readouterr().err  # no tokenizers fork warning in the workers


@pytest.mark.parametrize("name", ["llama3", "qwen"])
@pytest.mark.parametrize("processes", [1, 2])
def test_alpaca_dataset_holds_the_ids_tokenizers_gives(tok, shared_data, tmp_path, name, processes):
    with open(os.path.join(shared_data, "alpaca_zh_demo.json"), encoding="utf-8") as f:
        examples = json.load(f)[:300]
    corpus = tmp_path / "alpaca.jsonl"  # JSON lines: split over the processes, unlike an array
    corpus.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples),
                      encoding="utf-8")
    seq_length = 96
    summary = preprocess(str(corpus), None, str(tmp_path / "ds"), data_processor="alpaca",
                         seq_length=seq_length, processes_num=processes, progress=False,
                         tokenizer_path=tok[name])
    raw, eos = reference(tok[name])
    expected = []
    for e in examples:
        prompt = raw.encode(build_prompt(e["instruction"], e["input"], ALPACA_TEMPLATE)).ids
        if len(prompt) < seq_length + 1:
            answer = raw.encode(e["output"], add_special_tokens=False).ids
            expected.append(((prompt + answer + [eos])[:seq_length + 1], len(prompt)))
    ds = TokenDataset(str(tmp_path / "ds"))
    assert [(ds[i].tokens.tolist(), ds[i].prompt_length) for i in range(len(ds))] == expected
    assert summary["truncated"] > 0 and summary["skipped"]  # the limits were exercised


# --- training, generation and evaluation take the tokenizer -----------------------------------

@pytest.fixture(scope="module")
def trained(tok, lm_corpus, tmp_path_factory):
    """A few in-process training steps of the tiny config on a qwen-like (no bos) dataset:
    the folder (ds/, m = the final weights, log.txt)."""
    root = tmp_path_factory.mktemp("hf_train")
    preprocess(lm_corpus, None, str(root / "ds"), seq_length=64, progress=False,
               tokenizer_path=tok["qwen"])
    run_in_process(["--dataset_path", str(root / "ds"), "--tokenizer_path", tok["qwen"],
                    "--config_path", TINY, "--output_model_path", str(root / "m"),
                    "--total_steps", "10", "--save_checkpoint_steps", "10", "--report_steps", "1",
                    "--batch_size", "4", "--learning_rate", "1e-2", "--warmup", "0",
                    "--log_path", str(root / "log.txt")])
    return root


def test_pretrain_from_a_tokenizer_json_dataset_lowers_the_loss(trained):
    losses = logged_losses((trained / "log.txt").read_text())
    assert sorted(losses) == list(range(1, 11))
    assert losses[10] < losses[1] - 0.5, losses


def test_sha256_guard_rejects_a_dataset_of_another_tokenizer(tok, trained):
    with pytest.raises(DatasetError, match=r"made with another tokenizer than --tokenizer_path"):
        run_in_process(["--dataset_path", str(trained / "ds"), "--tokenizer_path", tok["llama3"],
                        "--config_path", TINY, "--output_model_path", str(trained / "other"),
                        "--total_steps", "1"])


def test_generate_and_evaluate_with_tokenizer_path(tok, trained, tmp_path, capsys):
    """generate_lm.py continues prompts given without a bos (qwen-like) exactly as the
    generator does; evaluate_ppl.py takes the tokenizer and guards the dataset's hash."""
    (tmp_path / "prompts.txt").write_text("北京是\nHello\n", encoding="utf-8")
    model_options = ["--load_model_path", str(trained / "m"), "--config_path", TINY,
                     "--tokenizer_path", tok["qwen"]]
    run_inference(generate_main, model_options + [
        "--test_path", tmp_path / "prompts.txt", "--prediction_path", tmp_path / "out.txt",
        "--greedy", "--max_new_tokens", "6"])
    model, tokenizer = load_model_and_tokenizer(TINY, str(trained / "m"), None,
                                                tokenizer_path=tok["qwen"])
    generator = TextGenerator(model, tokenizer, None, 6, SamplingOptions(top_k=1))
    assert generator.encode("北京是") == tokenizer.encode("北京是")  # no bos in front
    expected = [generator.complete([generator.encode(p)])[0] for p in ("北京是", "Hello")]
    lines = (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()
    assert [unescape_line(line) for line in lines] == expected and any(expected)
    with pytest.raises(GenerationError, match="adds no bos"):
        generator.encode("")

    assert run_inference(evaluate_main, model_options + ["--dataset_path", trained / "ds"]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert run_inference(evaluate_main, model_options + [  # raw text: preprocessed with it
        "--test_path", tmp_path / "prompts.txt", "--seq_length", "8"]) == 0
    stream = len(tokenizer.encode("北京是")) + len(tokenizer.encode("Hello")) + 2  # 2 eos, no bos
    samples = -(-stream // 9)  # seq_length + 1 tokens each; a sample's first is not predicted
    assert f"tokens: {stream - samples} " in capsys.readouterr().out
    other = model_options[:-1] + [tok["llama3"], "--dataset_path", trained / "ds"]
    assert run_inference(evaluate_main, other) == 2
    assert "another tokenizer than --tokenizer_path" in capsys.readouterr().err


# --- the HF export -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama3", "qwen", "bare_llama3"])
def test_export_loads_with_autotokenizer_and_gives_the_training_ids(tok, tmp_path, name, shared_data):
    transformers = pytest.importorskip("transformers")
    import tencentpretrain
    from scripts.convert_tencentpretrain_to_llama_huggingface import main
    from tencentpretrain.utils.weights import save_state_dict_file
    ours = load_tokenizer(tokenizer_path=tok[name])
    weights = tmp_path / "tiny.bin"
    save_state_dict_file(tencentpretrain.build_model(TINY, ours.vocab_size).state_dict(), str(weights))
    main(["--input_model_path", str(weights), "--config_path", TINY, "--output_model_path",
          str(tmp_path / "hf"), "--tokenizer_path", tok[name]])
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    with open(os.path.join(shared_data, "CLUECorpusSmall_sampled.txt"), encoding="utf-8") as f:
        held_out = [next(f).strip() for _ in range(420)][400:]
    for text in TEXTS + held_out:
        assert hf(text)["input_ids"] == ours.bos_ids + ours.encode(text), text
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (ours.bos_id, ours.eos_id)
    assert hf.eos_token_id == ours.eos_id


# --- one-line errors ---------------------------------------------------------------------------

def preprocess_error(argv, capsys):
    from preprocess import main
    with pytest.raises(SystemExit) as e:
        status = main(argv)
        raise SystemExit(status)
    err = capsys.readouterr().err.strip()
    return e.value.code, err


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file or folder"),
    ("folder without tokenizer.json", "a folder without tokenizer.json"),
    ("bad json", "not a Hugging Face tokenizer.json"),
    ("sentencepiece model", "goes to --spm_model_path"),
    ("unknown eos", "names eos_token '<nope>', which is not in tokenizer.json"),
    ("no eos", "no eos token"),
    ("bad tokenizer_config.json", "tokenizer_config.json:1: invalid JSON"),
])
def test_bad_tokenizer_path_is_a_one_line_error(tok, tmp_path, capsys, case, message, llama_spm):
    path = tmp_path / "t"
    path.mkdir()
    if case == "missing":
        path = tmp_path / "nothing"
    elif case == "bad json":
        path = path / "tokenizer.json"
        path.write_text('{"version": "1.0", "model": ')
    elif case == "sentencepiece model":
        path = llama_spm
    elif case in ("unknown eos", "no eos", "bad tokenizer_config.json"):
        shutil.copy(os.path.join(tok["qwen"], "tokenizer.json"), path)
        config = {"unknown eos": '{"eos_token": "<nope>"}', "no eos": '{"bos_token": null}',
                  "bad tokenizer_config.json": "{"}[case]
        (path / "tokenizer_config.json").write_text(config)
    code, err = preprocess_error(["--corpus_path", llama_spm, "--dataset_path",
                                  str(tmp_path / "ds"), "--tokenizer_path", str(path)], capsys)
    assert code == 2 and err.startswith("error: --tokenizer_path") and message in err, err
    assert "\n" not in err


def test_one_tokenizer_option_exactly(tok, llama_spm, tmp_path, capsys):
    with pytest.raises(TokenizerError, match="both given"):
        load_tokenizer(llama_spm, tok["qwen"])
    with pytest.raises(TokenizerError, match="a tokenizer is required"):
        load_tokenizer()
    code, err = preprocess_error(["--corpus_path", llama_spm, "--dataset_path", str(tmp_path / "d"),
                                  "--tokenizer_path", tok["qwen"], "--spm_model_path", llama_spm],
                                 capsys)
    assert code == 2 and "not allowed with argument" in err
    with pytest.raises(TokenizerError, match="goes to --tokenizer_path"):
        load_tokenizer(spm_model_path=os.path.join(tok["qwen"], "tokenizer.json"))
