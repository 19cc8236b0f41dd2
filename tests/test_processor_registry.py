"""The data processor registry is an extension point on both sides: a processor registered at
run time (one file's worth of code, here) preprocesses a corpus, and training and evaluation
read its dataset from what its meta.json declares ("holds"), never from its name; datasets
written before the declaration open as they did."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tencentpretrain.data import TokenDataset, collate, preprocess
from tencentpretrain.data.format import DatasetError, Holds
from tencentpretrain.data.processors import PROCESSORS, str2processor
from tencentpretrain.data.processors.base import Processor, assemble_examples
from tests.conftest import ROOT
from tests.training_support import LLAMA_SPM, TINY, run_in_process

EVALUATE = os.path.join(ROOT, "inference", "evaluate_ppl.py")


# --- the new processor: what would be tencentpretrain/data/processors/qa.py -------------------
class QaProcessor(Processor):
    """Text lines "question|answer": [bos] + question + answer + [eos], cut to seq_length + 1,
    with the question's length (bos included) kept for --prefix_lm_loss."""
    name = "qa"
    noun = "lines"
    extensions = (".tokens", ".lengths", ".prompts")
    with_prompts = True

    def __init__(self, task, tokenizer):
        super().__init__(task, tokenizer)
        self.pairs = []

    def add_text(self, text, last):
        question, bar, answer = text.partition("|")
        if not bar or not question or not answer:
            self.skipped["not question|answer"] += 1
            return
        self.pairs.append((question, answer))

    def flush(self):
        if not self.pairs:
            return
        ids = self.tokenizer.encode_batch([t for pair in self.pairs for t in pair])
        bos, eos = self.tokenizer.bos_ids, self.tokenizer.eos_id
        samples = [(bos + q + a + [eos])[:self.task.seq_length + 1] for q, a in zip(ids[::2], ids[1::2])]
        self.write_examples(samples, [len(bos) + len(q) for q in ids[::2]])
        self.pairs = []

    @classmethod
    def assemble(cls, prefixes, writer, task, staging):
        return assemble_examples(prefixes, writer)
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def qa_registered():
    str2processor["qa"] = QaProcessor  # the one registry line
    yield
    del str2processor["qa"]


def qa_corpus(path):
    lines = [f"What is {a} plus {b}?|It is {a + b}, as {a} and {b} make {a + b}."
             for a in range(12) for b in range(3)]
    path.write_text("\n".join(lines + ["no bar here"]) + "\n", encoding="utf-8")
    return str(path)


def test_registered_processor_preprocesses_trains_and_evaluates(tmp_path, qa_registered):
    assert "qa" in PROCESSORS
    dataset = str(tmp_path / "qa")
    summary = preprocess(qa_corpus(tmp_path / "qa.txt"), LLAMA_SPM, dataset, data_processor="qa",
                         seq_length=32, processes_num=2, progress=False)
    assert summary["documents"] == 36 and summary["skipped"] == {"not question|answer": 1}
    meta = json.load(open(os.path.join(dataset, "meta.json")))
    assert meta["data_processor"] == "qa" and meta["holds"] == {
        "prompt_lengths": True, "loss_mask": False, "boundaries": False, "packed": False}
    ds = TokenDataset(dataset)
    assert ds.has_prompt_lengths and len(ds) == 36 and 1 < ds[0].prompt_length < len(ds[0].tokens)
    batch = collate([ds[0]], ds.pad_id, prefix_lm_loss=True)
    assert int(batch["loss_mask"].sum()) == len(ds[0].tokens) - ds[0].prompt_length

    output = str(tmp_path / "model.bin")
    run_in_process(["--dataset_path", dataset, "--spm_model_path", LLAMA_SPM, "--config_path", TINY,
                    "--output_model_path", output, "--total_steps", "4", "--batch_size", "4",
                    "--learning_rate", "1e-3", "--warmup", "0", "--data_processor", "qa",
                    "--prefix_lm_loss", "--report_steps", "2"])
    # another process, where "qa" is registered nowhere: the dataset opens from its meta.json
    result = subprocess.run([sys.executable, EVALUATE, "--load_model_path", output, "--config_path",
                             TINY, "--spm_model_path", LLAMA_SPM, "--dataset_path", dataset,
                             "--prefix_lm_loss"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    fields = result.stdout.split()
    assert fields[::2] == ["tokens:", "loss:", "perplexity:"]
    assert int(fields[1]) == sum(len(ds[i].tokens) - ds[i].prompt_length for i in range(len(ds)))


@pytest.mark.parametrize("processor,extra", [("lm", {}), ("alpaca", {}), ("alpaca", {"packing": True})])
def test_datasets_written_before_holds_open_alike(tmp_path, processor, extra):
    """meta.json without "holds" (written before it was declared): derived from data_processor
    and packed, the same samples come back."""
    from tests.training_support import DEMO_CORPUS, DEMO_INSTRUCTIONS
    corpus = DEMO_CORPUS if processor == "lm" else DEMO_INSTRUCTIONS
    new = str(tmp_path / "new")
    preprocess(corpus, LLAMA_SPM, new, data_processor=processor, seq_length=64 if processor == "lm" else 256,
               progress=False, **extra)
    old = str(tmp_path / "old")
    shutil.copytree(new, old)
    meta = json.load(open(os.path.join(old, "meta.json")))
    holds = meta.pop("holds")
    json.dump(meta, open(os.path.join(old, "meta.json"), "w"))
    assert Holds.from_meta(meta, "old").to_dict() == holds
    a, b = TokenDataset(new), TokenDataset(old)
    assert len(a) == len(b) and a.has_prompt_lengths == b.has_prompt_lengths and a.packed == b.packed
    for i in range(len(a)):
        for x, y in zip(a[i], b[i]):
            assert np.array_equal(x, y) if x is not None else y is None


def test_holds_refused_when_malformed(tmp_path):
    meta = {"data_processor": "qa"}
    with pytest.raises(DatasetError, match='no "holds" and unknown data_processor'):
        Holds.from_meta(meta, "m.json")
    with pytest.raises(DatasetError, match='"holds" must map'):
        Holds.from_meta(dict(meta, holds={"prompts": True}), "m.json")
    with pytest.raises(DatasetError, match="packed samples need boundaries"):
        Holds.from_meta(dict(meta, holds={"packed": True}), "m.json")
