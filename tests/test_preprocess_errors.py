"""Every bad input gets a one-line error naming file, line and problem (or a counted skip), and
never leaves a dataset or temporary files behind."""
import json
import os
import re

import pytest

from tencentpretrain.data import CorpusError, DatasetError, preprocess
from tencentpretrain.tokenizer import TokenizerError

ALPACA = {"instruction": "Say hi", "input": "", "output": "hi"}


def jsonl(*records):
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def expect_error(tmp_path, name, content, spm_path, error=CorpusError, **options):
    """Run on a corpus file written from `content`; returns the one-line message, with the
    temporary directory left out of paths."""
    corpus = tmp_path / name
    corpus.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    options.setdefault("seq_length", 64)
    with pytest.raises(error) as info:
        preprocess(str(corpus), spm_path, str(tmp_path / "ds"), progress=False, **options)
    text = str(info.value)
    assert "\n" not in text
    assert sorted(os.listdir(tmp_path)) == [name]  # no dataset, no staging directory
    return text.replace(str(tmp_path) + os.sep, "")


@pytest.mark.parametrize("name, content, message, options", [
    ("bad.txt", b"fine\nalso fine\nab\xffcd\n", r"bad\.txt:3: invalid UTF-8 \(byte 0xff at column 3\)", {}),
    ("bad.jsonl", b'{"text": "ok"}\n{"text": "\xe4\xb8"}\n', r"bad\.jsonl:2: invalid UTF-8 \(byte 0xe4 at column 11\)", {}),
    ("broken.jsonl", jsonl({"text": "a"}, '{"text": "b" "c"}'), r"broken\.jsonl:2: broken JSON \(Expecting ',' delimiter\)", {}),
    ("nokey.jsonl", jsonl({"text": "a"}, {"body": "b"}), r'nokey\.jsonl:2: missing "text"', {}),
    ("number.jsonl", jsonl({"text": 5}), r'number\.jsonl:1: "text" is a number, not a string', {}),
    ("list.jsonl", jsonl([{"text": "a"}]), r"list\.jsonl:1: found a JSON array, but a \.jsonl file holds one JSON object per line.*", {}),
    ("lines.json", jsonl({"text": "a"}, {"text": "b"}), r"lines\.json:1: expected a JSON array \('\['\), found '\{'.*", {}),
    ("scalar.jsonl", jsonl('"text"'), r"scalar\.jsonl:1: expected a JSON object, got str", {}),
    ("empty.txt", b"", r"empty\.txt: empty corpus", {}),
    ("blank.txt", b"\n  \n\t\n", r"blank\.txt: empty corpus \(no usable document; skipped: 3 empty document\)", {}),
    ("sft.jsonl", jsonl(ALPACA, {"input": "", "output": "x"}), r'sft\.jsonl:2: missing "instruction"', {"data_processor": "alpaca"}),
    ("sft.jsonl", jsonl({**ALPACA, "output": None}), r'sft\.jsonl:1: "output" is null, not a string', {"data_processor": "alpaca"}),
    ("sft.jsonl", jsonl({**ALPACA, "input": ["x"]}), r'sft\.jsonl:1: "input" is an array, not a string', {"data_processor": "alpaca"}),
    ("sft.json", json.dumps([ALPACA, {"instruction": 1, "output": "x"}], indent=1),
     r'sft\.json:7: example 2: "instruction" is a number, not a string', {"data_processor": "alpaca"}),
    ("sft.json", '[\n{"instruction": "a", "output": "b"},\n{"instruction": "a" "output": "b"}\n]',
     r"sft\.json:3: example 2: broken JSON \(Expecting ',' delimiter\)", {"data_processor": "alpaca"}),
    ("sft.json", json.dumps([ALPACA] * 3), r"sft\.json: empty corpus \(no usable example; skipped: 3 prompt too long for seq_length \(--seq_length 39 or more would keep them\)\)",
     {"data_processor": "alpaca", "seq_length": 20}),
    # a one-line array: the example's index within it says which one
    ("sft.json", json.dumps([{"instruction": "a", "output": "b"}, {"output": "b"}]),
     r'sft\.json:1: example 2: missing "instruction"', {"data_processor": "alpaca"}),
    ("docs.json", json.dumps([{"text": "a"}, {"text": "b"}, {"body": "c"}]),
     r'docs\.json:1: example 3: missing "text"', {}),
    ("docs.json", '[{"text": "a"}, [1]]', r"docs\.json:1: example 2: expected a JSON object, got list", {}),
    ("docs.json", '[{"text": "a"} {"text": "b"}]',
     r"docs\.json:1: after example 1: broken JSON \(expected ',' or '\]', found '\{'\)", {}),
    ("sft.txt", "hello\n", r"sft\.txt: --data_processor alpaca reads a JSON array \(\.json\) or JSON lines \(\.jsonl\) file", {"data_processor": "alpaca"}),
])
def test_bad_corpus(tmp_path, llama_spm, name, content, message, options):
    text = expect_error(tmp_path, name, content, llama_spm, **options)
    assert re.fullmatch(message, text), text


def test_error_in_a_later_range_names_the_line_in_the_file(tmp_path, llama_spm):
    lines = [f"line {i}".encode() for i in range(1, 2001)]
    lines[1499] = b"bad \xff"
    text = expect_error(tmp_path, "big.txt", b"\n".join(lines), llama_spm, processes_num=3)
    assert text == "big.txt:1500: invalid UTF-8 (byte 0xff at column 5)"


def test_the_earliest_error_is_reported(tmp_path, llama_spm):
    lines = [json.dumps({"text": f"line {i}"}) for i in range(1, 2001)]
    lines[1799] = "{broken"
    lines[9] = '{"text": 1}'
    text = expect_error(tmp_path, "two.jsonl", "\n".join(lines), llama_spm, processes_num=2)
    assert text == 'two.jsonl:10: "text" is a number, not a string'


@pytest.mark.parametrize("options, message, error", [
    ({"seq_length": 1}, "--seq_length must be at least 2, got 1", DatasetError),
    ({"processes_num": 0}, "--processes_num must be at least 1, got 0", DatasetError),
    ({"data_processor": "bert"}, "--data_processor bert: unknown (choose from lm, llm_pretrain, alpaca, llm_sft, conversation, t5, seq2seq)", DatasetError),
    ({"prompt_template": "t.json"}, "--prompt_template applies to --data_processor alpaca only", DatasetError),
])
def test_bad_options(tmp_path, llama_spm, options, message, error):
    assert expect_error(tmp_path, "c.txt", "hello\n", llama_spm, error=error, **options) == message


def test_bad_tokenizer(tmp_path, llama_spm):
    text = expect_error(tmp_path, "c.txt", "hello\n", str(tmp_path / "nope.model"), error=TokenizerError)
    assert text == "--spm_model_path nope.model: no such file"
    text = expect_error(tmp_path, "c.txt", "hello\n", str(tmp_path / "c.txt"), error=TokenizerError)
    assert text.startswith("--spm_model_path c.txt: not a SentencePiece model (")


def test_missing_corpus(tmp_path, llama_spm):
    with pytest.raises(CorpusError, match="--corpus_path .*missing.txt: no such file"):
        preprocess(str(tmp_path / "missing.txt"), llama_spm, str(tmp_path / "ds"), progress=False)


def test_unwritable_dataset_path(tmp_path, llama_spm):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello\n")
    with pytest.raises(DatasetError, match=r"--dataset_path .*c\.txt/ds: cannot write there"):
        preprocess(str(corpus), llama_spm, str(corpus / "ds"), progress=False)
    with pytest.raises(DatasetError, match="exists and is not a dataset directory"):
        preprocess(str(corpus), llama_spm, str(corpus), progress=False)
    assert os.listdir(tmp_path) == ["c.txt"]
