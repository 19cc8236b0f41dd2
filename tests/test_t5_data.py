"""T5 span corruption (--data_processor t5) and seq2seq training through pretrain.py."""
import json
import os

import numpy as np
import pytest

from tencentpretrain.data import TokenDataset, collate, preprocess
from tencentpretrain.data.format import DatasetError
from tencentpretrain.data.seq2seq import corrupt, noise_mask
from tencentpretrain.vocab.special_tokens import add_special_tokens
from tests.training_support import (DEMO_CORPUS, LLAMA_SPM, T5_TINY, generate_seq2seq,
                                    logged_losses, train_t5)


@pytest.fixture(scope="module")
def t5_spm(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("t5spm") / "spm.model")
    add_special_tokens(LLAMA_SPM, [f"<extra_id_{i}>" for i in reversed(range(100))], path)
    return path


def test_noise_mask_is_exact_on_a_fixed_seed_and_has_the_density():
    mask = noise_mask(20, 0.15, 3.0, np.random.default_rng([7, 0]))
    assert mask.tolist() == noise_mask(20, 0.15, 3.0, np.random.default_rng([7, 0])).tolist()
    assert mask.sum() == 3 and not mask[0]  # round(20 * 0.15) masked; a kept run first
    masked = sum(noise_mask(568, 0.15, 3.0, np.random.default_rng([1, k])).sum()
                 for k in range(200))
    assert abs(masked / (568 * 200) - 0.15) < 0.01


def test_corruption_keeps_every_token_once_and_the_target_reconstructs_the_input():
    rng = np.random.default_rng(0)
    tokens = rng.integers(10, 1000, 300)
    sentinels = list(range(2000, 1900, -1))  # <extra_id_0> the last id, counting down
    for k in range(20):
        mask = noise_mask(len(tokens), 0.15, 3.0, np.random.default_rng([3, k]))
        source, target = corrupt(tokens, mask, sentinels, eos_id=2)
        assert source[-1] == 2 and target[-1] == 2
        # rebuild: each sentinel of the source is replaced by what follows it in the target
        spans, current = {}, None
        for t in target[:-1].tolist():
            if t in sentinels:
                current = t
                spans[current] = []
            else:
                spans[current].append(t)
        rebuilt = [x for t in source[:-1].tolist() for x in (spans[t] if t in spans else [t])]
        assert rebuilt == tokens.tolist()
        starts = np.flatnonzero(mask & ~np.pad(mask, [[1, 0]])[:-1])
        assert [t for t in source.tolist() if t in sentinels] == sentinels[:len(starts)]
        assert len(source) - 1 + int(mask.sum()) - len(starts) == len(tokens)


def test_t5_dataset_is_deterministic_and_identical_for_one_and_two_processes(tmp_path, t5_spm):
    outs = []
    for n in (1, 2):
        out = str(tmp_path / f"ds{n}")
        preprocess(DEMO_CORPUS, t5_spm, out, data_processor="t5", seq_length=64,
                   processes_num=n, seed=5, progress=False, processor_options={})
        outs.append(out)
    for name in sorted(os.listdir(outs[0])):
        if name != "meta.json":
            with open(os.path.join(outs[0], name), "rb") as a, \
                    open(os.path.join(outs[1], name), "rb") as b:
                assert a.read() == b.read(), name
    meta = json.load(open(os.path.join(outs[0], "meta.json")))
    assert meta["holds"]["seq2seq"] and meta["data_processor"] == "t5"
    ds = TokenDataset(outs[0])
    assert all(ds[i].prompt_length <= 64 for i in range(len(ds)))
    batch = collate([ds[0], ds[1]], ds.pad_id)
    assert set(batch) == {"input_ids", "seg", "tgt_ids", "labels", "loss_mask"}
    assert batch["tgt_ids"][:, 0].tolist() == [ds.pad_id] * 2
    assert batch["tgt_ids"][0, 1:].tolist()[:5] == batch["labels"][0, :5].tolist()


def test_a_tokenizer_without_sentinels_is_refused_in_one_line(tmp_path):
    with pytest.raises(DatasetError, match="--add_sentinel_tokens 100") as e:
        preprocess(DEMO_CORPUS, LLAMA_SPM, str(tmp_path / "ds"), data_processor="t5",
                   seq_length=64, progress=False)
    assert "\n" not in str(e.value)


def test_pretrain_t5_span_corruption_lowers_the_loss_and_generates(tmp_path, t5_spm, capsys):
    data = str(tmp_path / "ds")
    preprocess(DEMO_CORPUS, t5_spm, data, data_processor="t5", seq_length=64, progress=False,
               processor_options={"noise_density": 0.15, "mean_noise_span_length": 3})
    out = str(tmp_path / "t5")
    losses = logged_losses(train_t5(data, t5_spm, out, "t5", 12, 8, 3e-3, capsys))
    assert losses[12] < losses[1] - 0.5, losses
    predictions = generate_seq2seq(out, T5_TINY, t5_spm, ["The capital of France <extra_id_0> "
                                                          "Paris.", "Hello world"],
                                   tmp_path / "pred.txt", 8, capsys)
    assert len(predictions) == 2
