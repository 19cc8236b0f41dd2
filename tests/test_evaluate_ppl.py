"""Perplexity: the loss of a batch is its training loss; many batches give the mean over all
counted tokens, whatever the batch size; --prefix_lm_loss counts answers only."""
import math
import os
import subprocess
import sys

import pytest
import torch

import tencentpretrain
from tencentpretrain.data import DatasetError, TokenDataset, collate, preprocess
from tencentpretrain.evaluation import evaluate, evaluate_dataset
from tencentpretrain.tokenizer import SpmTokenizer
from tests.conftest import ROOT, tiny_checkpoint
from tests.training_support import run_tool

EVALUATE = os.path.join(ROOT, "inference", "evaluate_ppl.py")
ALPACA = [('{"instruction": "Name a colour.", "input": "", "output": "Blue is a colour."}'),
          ('{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}'),
          ('{"instruction": "Say hi.", "input": "", "output": "Hi there, how are you today?"}')]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_data, llama_spm):
    """A random tiny model, its checkpoint, and lm + alpaca datasets from a small corpus."""
    tmp = tmp_path_factory.mktemp("ppl")
    with open(os.path.join(shared_data, "wiki_demo.txt"), encoding="utf-8") as f:
        text = "".join(f.readline()[:1500] + "\n" for _ in range(3))
    (tmp / "text.txt").write_text(text, encoding="utf-8")
    (tmp / "alpaca.jsonl").write_text("\n".join(ALPACA) + "\n")
    preprocess(str(tmp / "text.txt"), llama_spm, str(tmp / "lm"), seq_length=64, progress=False)
    preprocess(str(tmp / "alpaca.jsonl"), llama_spm, str(tmp / "alpaca"),
               data_processor="alpaca", seq_length=64, progress=False)
    config = tiny_checkpoint(tmp / "tiny.bin")
    model = tencentpretrain.load_model(config, str(tmp / "tiny.bin"))
    return tmp, config, model, SpmTokenizer(llama_spm)


@pytest.mark.parametrize("name,prefix_lm_loss", [("lm", False), ("alpaca", False),
                                                 ("alpaca", True)])
def test_loss_is_the_training_loss(setup, name, prefix_lm_loss):
    tmp, _, model, _ = setup
    dataset = TokenDataset(str(tmp / name))
    samples = [dataset[i] for i in range(len(dataset))]
    batch = collate(samples, dataset.pad_id, prefix_lm_loss)
    with torch.no_grad():
        loss_sum, count = model(**batch)  # what training divides: sum / count
    whole = evaluate(model, dataset, batch_size=len(dataset), prefix_lm_loss=prefix_lm_loss)
    assert whole["tokens"] == int(count)
    assert whole["loss"] == pytest.approx(float(loss_sum / count), rel=1e-6)
    assert whole["perplexity"] == pytest.approx(math.exp(whole["loss"]))
    one_by_one = evaluate(model, dataset, batch_size=1, prefix_lm_loss=prefix_lm_loss)
    assert one_by_one["tokens"] == whole["tokens"]
    assert one_by_one["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    if prefix_lm_loss:  # only the answer and its EOS count
        assert whole["tokens"] == sum(len(s.tokens) - s.prompt_length for s in samples)


def test_prefix_lm_loss_needs_prompts(setup):
    tmp, _, model, tokenizer = setup
    with pytest.raises(DatasetError, match="alpaca"):
        evaluate_dataset(model, tokenizer, str(tmp / "lm"), prefix_lm_loss=True)


def run_cli(setup, *args):
    tmp, config, _, tokenizer = setup
    return subprocess.run([sys.executable, EVALUATE, "--load_model_path", str(tmp / "tiny.bin"),
                           "--config_path", config, "--spm_model_path", tokenizer.path,
                           *map(str, args)], capture_output=True, text=True, timeout=120)


def test_cli_raw_text_equals_preprocessed_dataset(setup):
    tmp, _, model, tokenizer = setup
    expected = evaluate_dataset(model, tokenizer, str(tmp / "lm"), batch_size=3)
    result = run_cli(setup, "--test_path", tmp / "text.txt", "--seq_length", 64)
    assert result.returncode == 0, result.stderr
    fields = result.stdout.split()
    assert fields[::2] == ["tokens:", "loss:", "perplexity:"]
    assert int(fields[1]) == expected["tokens"]
    assert float(fields[3]) == pytest.approx(expected["loss"], abs=1e-6)
    assert float(fields[5]) == pytest.approx(math.exp(float(fields[3])), rel=1e-4)
    assert result.stderr.splitlines() == [  # progress, while stdout holds the result only
        f"loading {tmp / 'tiny.bin'}", f"evaluating {tmp / 'text.txt'} on cpu, batches of 8"]


def test_cli_errors_are_one_line(setup, capsys):
    """In this process (the test above runs the real entry point): exit 2, one line."""
    tmp, config, _, tokenizer = setup
    status, _, err = run_tool("inference/evaluate_ppl.py", [
        "--load_model_path", tmp / "tiny.bin", "--config_path", config, "--spm_model_path",
        tokenizer.path, "--dataset_path", tmp / "lm", "--prefix_lm_loss"], capsys)
    assert status == 2
    assert err.splitlines()[-1] == (  # the last line, after the progress lines
        f"error: --prefix_lm_loss needs an alpaca dataset; {tmp / 'lm'} is lm")
    assert "Traceback" not in err
