"""Preprocessing on the real shared corpora: exact token round trips, checked against
sentencepiece directly; identical output whatever --processes_num; the CLI."""
import filecmp
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm

from tencentpretrain.data import TokenDataset, format_summary, preprocess
from tencentpretrain.data import corpus as corpus_module, str2processor
from tencentpretrain.prompts import ALPACA_TEMPLATE, build_prompt, load_template, TemplateError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(corpus, spm_path, out, **options):
    return preprocess(str(corpus), spm_path, str(out), progress=False, **options)


def document_stream(sp, texts):
    """[bos] + encode(text) + [eos] per non-empty stripped text, back to back, and the starts."""
    stream, starts = [], []
    for text in texts:
        text = text.strip()
        if text:
            starts.append(len(stream))
            stream += [sp.bos_id()] + sp.encode(text) + [sp.eos_id()]
    return np.array(stream, np.int64), np.array(starts, np.int64)


def check_lm_dataset(path, expected, starts, seq_length):
    ds = TokenDataset(str(path))
    samples = [ds[i] for i in range(len(ds))]
    assert all(len(s.tokens) == seq_length + 1 for s in samples[:-1])
    assert 1 <= len(samples[-1].tokens) <= seq_length + 1
    np.testing.assert_array_equal(np.concatenate([s.tokens for s in samples]), expected)
    # segments restart exactly where a document starts inside a sample
    segments = np.concatenate([s.segments for s in samples])
    offsets = np.cumsum([0] + [len(s.tokens) for s in samples])
    opens = np.zeros(len(expected), bool)
    opens[starts] = True
    opens[offsets[:-1]] = False
    expected_segments = np.concatenate([1 + np.cumsum(opens[a:b]) for a, b in zip(offsets, offsets[1:])])
    np.testing.assert_array_equal(segments, expected_segments)
    assert ds.num_tokens == len(expected) and ds.meta["num_documents"] == len(starts)
    return ds


def test_lm_txt_round_trip(shared_data, llama_spm, tmp_path):
    corpus = os.path.join(shared_data, "CLUECorpusSmall_sampled.txt")
    summary = run(corpus, llama_spm, tmp_path / "ds", seq_length=512)
    sp = spm.SentencePieceProcessor(model_file=llama_spm)
    with open(corpus, encoding="utf-8") as f:
        expected, starts = document_stream(sp, f)
    ds = check_lm_dataset(tmp_path / "ds", expected, starts, 512)
    assert summary["documents"] == 2500 and summary["tokens"] == len(expected)
    assert ds.meta["dtype"] == "uint16" and ds.data_processor == "lm" and not ds.has_prompt_lengths
    assert (ds.bos_id, ds.eos_id, ds.pad_id, ds.vocab_size) == (1, 2, 0, 32000)
    assert len(ds.tokenizer_sha256) == 64
    for key in ("format_version", "seq_length", "num_samples", "num_tokens", "shards"):
        assert key in ds.meta
    shard = ds.meta["shards"][0]["name"]
    assert os.path.getsize(tmp_path / "ds" / f"{shard}.bin") == 2 * len(expected)
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_lm_jsonl_round_trip(shared_data, llama_spm, tmp_path):
    corpus = os.path.join(shared_data, "c4_demo.jsonl")
    run(corpus, llama_spm, tmp_path / "ds", seq_length=256, processes_num=2)
    sp = spm.SentencePieceProcessor(model_file=llama_spm)
    with open(corpus, encoding="utf-8") as f:
        expected, starts = document_stream(sp, (json.loads(line)["text"] for line in f))
    check_lm_dataset(tmp_path / "ds", expected, starts, 256)


def test_uint32_round_trip(shared_data, chinese_spm, tmp_path):
    corpus = os.path.join(shared_data, "CLUECorpusSmall_sampled.txt")
    run(corpus, chinese_spm, tmp_path / "ds", seq_length=128, processes_num=2)
    sp = spm.SentencePieceProcessor(model_file=chinese_spm)
    with open(corpus, encoding="utf-8") as f:
        expected, starts = document_stream(sp, f)
    assert expected.max() > 65535
    ds = check_lm_dataset(tmp_path / "ds", expected, starts, 128)
    assert ds.meta["dtype"] == "uint32" and ds.pad_id == 0 and ds.bos_id == 2


def test_processes_num_gives_identical_files(shared_data, llama_spm, tmp_path):
    corpus = os.path.join(shared_data, "CLUECorpusSmall_sampled.txt")
    for n in (1, 2, 3):
        run(corpus, llama_spm, tmp_path / f"ds{n}", seq_length=100, processes_num=n, shard_tokens=300_000)
    names = sorted(os.listdir(tmp_path / "ds1"))
    assert len(names) == 1 + 4 * 3  # meta + 4 shards of .bin/.idx.npy/.doc.npy
    for n in (2, 3):
        assert sorted(os.listdir(tmp_path / f"ds{n}")) == names
        match, mismatch, errors = filecmp.cmpfiles(tmp_path / "ds1", tmp_path / f"ds{n}", names, shallow=False)
        assert mismatch == [] and errors == []


def test_alpaca_round_trip(shared_data, llama_spm, tmp_path):
    corpus = os.path.join(shared_data, "alpaca_zh_demo.json")
    seq_length = 160
    summary = run(corpus, llama_spm, tmp_path / "ds", data_processor="llm_sft", seq_length=seq_length)
    sp = spm.SentencePieceProcessor(model_file=llama_spm)
    with open(corpus, encoding="utf-8") as f:
        examples = json.load(f)
    expected, skipped, truncated, longest_skipped = [], 0, 0, 0
    for ex in examples:
        prompt = sp.encode(build_prompt(ex["instruction"], ex.get("input", "")))
        if 1 + len(prompt) >= seq_length + 1:
            skipped += 1
            longest_skipped = max(longest_skipped, len(prompt))
            continue
        tokens = [sp.bos_id()] + prompt + sp.encode(ex["output"]) + [sp.eos_id()]
        truncated += len(tokens) > seq_length + 1
        expected.append((tokens[:seq_length + 1], 1 + len(prompt)))
    assert skipped and truncated and any(ex["input"] for ex in examples)  # all paths exercised
    ds = TokenDataset(str(tmp_path / "ds"))
    assert ds.data_processor == "alpaca" and ds.has_prompt_lengths and len(ds) == len(expected)
    for i, (tokens, prompt_length) in enumerate(expected):
        sample = ds[i]
        assert sample.tokens.tolist() == tokens and sample.prompt_length == prompt_length
        assert (sample.segments == 1).all()
    assert summary["skipped"] == {"prompt too long for seq_length": skipped}
    assert summary["truncated"] == truncated
    assert ds.meta["prompt_template"] == ALPACA_TEMPLATE.to_dict()
    assert (summary["read"], summary["documents"]) == (len(examples), len(examples) - skipped)
    text = format_summary(summary)
    assert f"examples   {len(examples):,} read, {len(expected):,} kept, {skipped:,} skipped" in text
    # the --seq_length the summary names keeps every example, one less does not
    fits = summary["seq_length_to_keep"]
    assert fits == longest_skipped + 1
    assert f"{skipped} prompt too long for seq_length (--seq_length {fits} or more would keep them)" in text
    assert run(corpus, llama_spm, tmp_path / "fits", data_processor="alpaca", seq_length=fits)["skipped"] == {}
    assert run(corpus, llama_spm, tmp_path / "short", data_processor="alpaca",
               seq_length=fits - 1)["skipped"]["prompt too long for seq_length"] >= 1


def test_alpaca_jsonl_with_template_file(shared_data, llama_spm, tmp_path):
    with open(os.path.join(shared_data, "alpaca_zh_demo.json"), encoding="utf-8") as f:
        examples = json.load(f)[:40]
    corpus = tmp_path / "sft.jsonl"
    corpus.write_text("".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples), encoding="utf-8")
    template_path = tmp_path / "template.json"
    template_path.write_text(json.dumps({"prompt_input": "Q: {instruction} {input} {json}\nA: ",
                                         "prompt_no_input": "Q: {instruction}\nA: "}))
    run(corpus, llama_spm, tmp_path / "ds", data_processor="alpaca", seq_length=1024,
        processes_num=2, prompt_template=str(template_path))
    template = load_template(str(template_path))
    sp = spm.SentencePieceProcessor(model_file=llama_spm)
    ds = TokenDataset(str(tmp_path / "ds"))
    assert len(ds) == len(examples)
    for ex, sample in zip(examples, (ds[i] for i in range(len(ds)))):
        prompt = build_prompt(ex["instruction"], ex["input"], template)
        assert prompt.startswith("Q: ") and ("{json}" in prompt) == bool(ex["input"])
        assert sample.tokens.tolist() == [1] + sp.encode(prompt) + sp.encode(ex["output"]) + [2]
        assert sample.prompt_length == 1 + len(sp.encode(prompt))


def test_build_prompt_default_template():
    prompt = build_prompt("Say hi", "")
    assert prompt.endswith("### Instruction:\nSay hi\n\n### Response:\n") and "### Input:" not in prompt
    prompt = build_prompt("Translate {input}", "bonjour")
    assert prompt.endswith("### Instruction:\nTranslate {input}\n\n### Input:\nbonjour\n\n### Response:\n")


@pytest.mark.parametrize("content, message", [
    ("not json", "invalid JSON"),
    ('{"prompt_no_input": "x"}', 'needs a "prompt_input" string'),
    ('{"prompt_input": "{instruction} only"}', '"prompt_input" lacks {input}'),
])
def test_bad_template_file(tmp_path, content, message):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(TemplateError, match=message.replace("{", r"\{").replace("(", r"\(")):
        load_template(str(path))


def test_long_line_is_tokenized_in_pieces(llama_spm, tmp_path, monkeypatch):
    """A line longer than PIECE_BYTES is cut at spaces; with LLaMA's dummy-prefix BPE the ids
    are then those of the whole line."""
    monkeypatch.setattr(corpus_module, "PIECE_BYTES", 4096)
    long_line = " ".join(f"word{i} x{i % 7}" for i in range(20000))
    chinese = "中文没有空格" * 3000
    corpus = tmp_path / "long.txt"
    corpus.write_text(f"short\n{long_line}\n{chinese}\n", encoding="utf-8")
    run(corpus, llama_spm, tmp_path / "ds", seq_length=64)
    sp = spm.SentencePieceProcessor(model_file=llama_spm)
    ds = TokenDataset(str(tmp_path / "ds"))
    tokens = np.concatenate([ds[i].tokens for i in range(len(ds))]).tolist()
    head = [1] + sp.encode("short") + [2, 1] + sp.encode(long_line) + [2]
    assert tokens[:len(head)] == head
    assert ds.meta["num_documents"] == 3
    assert sp.decode(tokens[len(head) + 1:-1]).replace(" ", "") == chinese


def test_jsonl_record_over_limit_is_skipped(llama_spm, tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "MAX_RECORD_BYTES", 1000)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "x " * 2000}) + "\n\n" + json.dumps({"text": "kept"}) + "\n")
    summary = run(corpus, llama_spm, tmp_path / "ds", seq_length=16)
    assert summary["documents"] == 1
    assert summary["skipped"] == {"JSON line too long": 1, "blank line": 1}


def test_rewrites_a_dataset_but_not_other_directories(shared_data, llama_spm, tmp_path):
    corpus = os.path.join(shared_data, "c4_demo.jsonl")
    run(corpus, llama_spm, tmp_path / "ds", seq_length=64)
    run(corpus, llama_spm, tmp_path / "ds", seq_length=128)
    assert TokenDataset(str(tmp_path / "ds")).seq_length == 128
    assert sorted(os.listdir(tmp_path)) == ["ds"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not a dataset directory"):
        run(corpus, llama_spm, tmp_path / "other", seq_length=64)
    assert os.listdir(tmp_path / "other") == ["precious.txt"]


def test_failure_while_assembling_leaves_nothing(shared_data, llama_spm, tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(str2processor["lm"], "assemble", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(os.path.join(shared_data, "c4_demo.jsonl"), llama_spm, tmp_path / "ds", processes_num=2)
    assert os.listdir(tmp_path) == []


def cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "preprocess.py"), *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_cli_help_explains_every_option():
    result = cli("--help")
    assert result.returncode == 0
    for option in ("--corpus_path", "--spm_model_path", "--dataset_path", "--data_processor",
                   "--seq_length", "--processes_num", "--seed", "--prompt_template",
                   "llm_pretrain", "llm_sft"):
        assert option in result.stdout


def test_cli_run_and_error(shared_data, llama_spm, tmp_path):
    out = tmp_path / "dataset.pt"
    result = cli("--corpus_path", os.path.join(shared_data, "c4_demo.jsonl"), "--spm_model_path",
                 llama_spm, "--dataset_path", str(out), "--data_processor", "llm_pretrain",
                 "--seq_length", "512", "--processes_num", "2", "--seed", "7")
    assert result.returncode == 0, result.stderr
    assert "documents  300 read, 300 kept, 0 skipped" in result.stdout and "tokens/s" in result.stdout
    assert TokenDataset(str(out)).meta["seed"] == 7
    assert (f"note: --dataset_path {out} is a folder (meta.json + shards), not a TencentPretrain "
            ".pt file" in result.stdout)
    assert "note: --processes_num" not in result.stdout  # JSON lines are split: 2 processes

    result = cli("--corpus_path", os.path.join(shared_data, "alpaca_zh_demo.json"), "--spm_model_path",
                 llama_spm, "--dataset_path", str(tmp_path / "sft"), "--data_processor", "alpaca",
                 "--processes_num", "2", "--no_progress")
    assert result.returncode == 0, result.stderr
    assert " 1 process(es))" in result.stdout
    assert ("note: --processes_num 2: a .json array is read by one process; JSON lines (.jsonl) "
            "are split across processes") in result.stdout
    assert "note: --dataset_path" not in result.stdout

    result = cli("--corpus_path", os.path.join(shared_data, "c4_demo.jsonl"), "--spm_model_path",
                 str(tmp_path / "missing.model"), "--dataset_path", str(tmp_path / "x"), "--no_progress")
    assert result.returncode == 2
    assert result.stderr == f"error: --spm_model_path {tmp_path / 'missing.model'}: no such file\n"


@pytest.mark.parametrize("alias,name,corpus", [("llm_pretrain", "lm", "c4_demo.jsonl"),
                                               ("llm_sft", "alpaca", "alpaca_zh_demo.json")])
def test_tencentpretrain_processor_names_make_the_same_dataset(shared_data, llama_spm, tmp_path,
                                                               alias, name, corpus):
    """TencentPretrain's processor names are aliases: byte-identical shards, canonical meta."""
    for processor in (alias, name):
        run(os.path.join(shared_data, corpus), llama_spm, tmp_path / processor,
            data_processor=processor, seq_length=128)
    names = sorted(f for f in os.listdir(tmp_path / name) if f != "meta.json")
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / alias, tmp_path / name, names,
                                               shallow=False)
    assert names and match == names and not mismatch and not errors
    for processor in (alias, name):
        assert TokenDataset(str(tmp_path / processor)).data_processor == name
