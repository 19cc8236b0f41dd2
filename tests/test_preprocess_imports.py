"""Preprocessing never imports torch: preprocess.py (workers included), the data package and
the vocabulary scripts that need no model start fast and stay small."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Runs a script as __main__ and says, at exit, which torch modules it imported; a forked
# preprocessing worker (which leaves by os._exit, skipping atexit) says it when its byte range
# is done. One report file per process.
WRAPPER = r"""
import atexit, os, runpy, sys
report = sys.argv.pop(1)
def check():
    with open(f"{report}.{os.getpid()}", "w") as f:
        f.write(",".join(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))))
atexit.register(check)
sys.path.insert(0, os.path.dirname(sys.argv[1]))
sys.path.insert(0, os.getcwd())  # the checkout
from tencentpretrain.data import builder
tokenize_range = builder.tokenize_range
def reporting(*args, **kwargs):
    try:
        return tokenize_range(*args, **kwargs)
    finally:
        check()
builder.tokenize_range = reporting
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def torch_modules(tmp_path, script, *args):
    report = tmp_path / "report"
    result = subprocess.run([sys.executable, "-c", WRAPPER, str(report),
                             os.path.join(ROOT, script), *map(str, args)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    reports = {p.name: p.read_text() for p in tmp_path.iterdir() if p.name.startswith("report.")}
    return result, reports


@pytest.mark.parametrize("processes", [1, 2])
def test_preprocess_never_imports_torch(tmp_path, llama_spm, processes):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"Document {i} says hello to the world.\n" for i in range(200)))
    result, reports = torch_modules(tmp_path, "preprocess.py", "--corpus_path", corpus,
                                    "--spm_model_path", llama_spm, "--dataset_path", tmp_path / "ds",
                                    "--seq_length", 32, "--processes_num", processes,
                                    "--no_progress")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ds" / "meta.json").exists()
    assert len(reports) == 1 + (processes if processes > 1 else 0)  # the parent and each worker
    assert all(modules == "" for modules in reports.values()), reports


def test_data_package_imports_torch_only_for_the_prefetcher():
    code = ("import sys; import tencentpretrain.data as d; from tencentpretrain.data import "
            "preprocess, TokenDataset, BatchIterator, collate; import tencentpretrain.vocab.train, "
            "tencentpretrain.vocab.merge; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'Prefetcher' in d.__all__; from tencentpretrain.data import Prefetcher; "
            "assert 'torch' in sys.modules and Prefetcher.__module__ == "
            "'tencentpretrain.data.prefetch'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_vocabulary_scripts_never_import_torch(tmp_path, llama_spm):
    corpus = tmp_path / "zh.txt"
    corpus.write_text("".join("我们在北京学习中文，天气很好。东京的大学。\n" for _ in range(50)),
                      encoding="utf-8")
    result, reports = torch_modules(tmp_path, "scripts/train_tokenizer.py", "--corpus_path",
                                    corpus, "--vocab_size", 300, "--output_spm_model_path",
                                    tmp_path / "zh.model")
    assert result.returncode == 0, result.stderr
    assert list(reports.values()) == [""]
    for p in tmp_path.glob("report.*"):
        p.unlink()
    result, reports = torch_modules(tmp_path, "scripts/merge_tokenizers.py",
                                    "--base_spm_model_path", llama_spm, "--new_spm_model_path",
                                    tmp_path / "zh.model", "--output_spm_model_path",
                                    tmp_path / "m.model", "--scripts", "Han")
    assert result.returncode == 0, result.stderr
    assert list(reports.values()) == [""]
