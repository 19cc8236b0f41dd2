"""The reader: validation against meta.json, samples and segments, batching and exact resume."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from tencentpretrain.data import (BatchIterator, DatasetError, Sample, TokenDataset, collate,
                                  preprocess, sample_order)


@pytest.fixture(scope="module")
def lm_dataset(tmp_path_factory, llama_spm):
    """Short documents and seq_length 8, so documents straddle samples; several shards."""
    root = tmp_path_factory.mktemp("lm")
    words = ["alpha", "beta gamma", "delta epsilon zeta eta theta", "iota", "kappa lambda mu nu xi"]
    (root / "c.txt").write_text("\n".join(words[i % 5] for i in range(60)) + "\n")
    preprocess(str(root / "c.txt"), llama_spm, str(root / "ds"), seq_length=8, shard_tokens=50, progress=False)
    return root / "ds"


@pytest.fixture(scope="module")
def alpaca_dataset(tmp_path_factory, llama_spm):
    root = tmp_path_factory.mktemp("alpaca")
    examples = [{"instruction": f"Count to {i}", "input": "now" if i % 2 else "", "output": " ".join(map(str, range(i)))}
                for i in range(1, 30)]
    (root / "sft.json").write_text(json.dumps(examples))
    preprocess(str(root / "sft.json"), llama_spm, str(root / "ds"), data_processor="alpaca",
               seq_length=256, progress=False)
    return root / "ds"


def copy(path, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(path, target)
    return target


def test_segments_follow_document_starts(lm_dataset):
    ds = TokenDataset(str(lm_dataset))
    assert len(ds.meta["shards"]) > 1 and ds.data_processor == "lm"
    stream = np.concatenate([ds[i].tokens for i in range(len(ds))])
    for i in range(len(ds)):
        sample = ds[i]
        assert sample.prompt_length == 0 and sample.segments.dtype == np.int32
        # a new segment starts exactly at each bos that is not the sample's first token
        opens = (sample.tokens == ds.bos_id)
        opens[0] = False
        np.testing.assert_array_equal(sample.segments, 1 + np.cumsum(opens))
    assert (stream == ds.bos_id).sum() == 60
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_alpaca_samples(alpaca_dataset):
    ds = TokenDataset(str(alpaca_dataset))
    assert ds.has_prompt_lengths and len(ds) == 29
    for i in range(len(ds)):
        sample = ds[i]
        assert sample.tokens[0] == ds.bos_id and sample.tokens[-1] == ds.eos_id
        assert 1 < sample.prompt_length < len(sample.tokens) and (sample.segments == 1).all()


@pytest.mark.parametrize("damage, message", [
    (lambda d: os.remove(d / "meta.json"), "meta.json: missing"),
    (lambda d: (d / "meta.json").write_text("{"), "meta.json:1: invalid JSON"),
    (lambda d: edit_meta(d, format_version=99), "format_version 99 is not supported"),
    (lambda d: edit_meta(d, format="something-else"), "not a tencentpretrain-tokens dataset"),
    (lambda d: edit_meta(d, dtype="uint32"), r"shard_00000\.bin: \d+ bytes, expected \d+ .*truncated or foreign"),
    (lambda d: truncate(d / "shard_00001.bin"), r"shard_00001\.bin: \d+ bytes, expected"),
    (lambda d: os.remove(d / "shard_00000.doc.npy"), r"shard_00000\.doc\.npy: missing"),
    (lambda d: (d / "shard_00000.idx.npy").write_bytes(b"garbage"), r"shard_00000\.idx\.npy: not a readable \.npy array"),
    (lambda d: truncate(d / "shard_00000.idx.npy"), r"shard_00000\.idx\.npy: not a readable \.npy array"),
    (lambda d: np.save(d / "shard_00000.idx.npy", np.zeros(3, np.int32)), r"shard_00000\.idx\.npy: expected int64"),
])
def test_damaged_dataset_is_refused(lm_dataset, tmp_path, damage, message):
    target = copy(lm_dataset, tmp_path)
    damage(target)
    with pytest.raises(DatasetError, match=message):
        TokenDataset(str(target))


def edit_meta(directory, **changes):
    meta = json.loads((directory / "meta.json").read_text())
    meta.update(changes)
    (directory / "meta.json").write_text(json.dumps(meta))


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 3)


def test_collate_masks():
    lm = Sample(np.array([1, 5, 6, 2, 1, 7]), 0, np.array([1, 1, 1, 1, 2, 2], np.int32))
    sft = Sample(np.array([1, 8, 9, 10, 2]), 3, np.ones(5, np.int32))
    single = Sample(np.array([2]), 0, np.ones(1, np.int32))
    batch = collate([lm, sft, single], pad_id=0)
    assert {k: (v.dtype, tuple(v.shape)) for k, v in batch.items()} == {
        "input_ids": (torch.int64, (3, 5)), "labels": (torch.int64, (3, 5)),
        "loss_mask": (torch.bool, (3, 5)), "seg": (torch.int64, (3, 5))}
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2, 1], [1, 8, 9, 10, 0], [0] * 5]
    assert batch["labels"].tolist() == [[5, 6, 2, 1, 7], [8, 9, 10, 2, 0], [0] * 5]
    assert batch["seg"].tolist() == [[1, 1, 1, 1, 2], [1, 1, 1, 1, 0], [0] * 5]
    assert batch["loss_mask"].int().tolist() == [[1] * 5, [1, 1, 1, 1, 0], [0] * 5]
    prefix = collate([lm, sft, single], pad_id=0, prefix_lm_loss=True, pad_to=7)
    # prompt [1, 8, 9]: labels 8 and 9 are prompt tokens; answer 10 and eos 2 count
    assert prefix["loss_mask"].int().tolist() == [[1] * 5 + [0, 0], [0, 0, 1, 1, 0, 0, 0], [0] * 7]
    with pytest.raises(ValueError):
        collate([lm], pad_id=0, pad_to=3)


def test_sample_order_splits_a_permutation():
    orders = [sample_order(103, seed=7, epoch=2, rank=r, world_size=4) for r in range(4)]
    assert all(len(o) == 25 and o.dtype == np.int64 for o in orders)
    union = np.concatenate(orders)
    assert len(set(union.tolist())) == 100 and union.max() < 103
    np.testing.assert_array_equal(orders[1], sample_order(103, 7, 2, 1, 4))
    assert not np.array_equal(orders[1], sample_order(103, 7, 3, 1, 4))
    assert not np.array_equal(orders[1], sample_order(103, 8, 2, 1, 4))


def test_batch_iterator_resumes_exactly(lm_dataset):
    ds = TokenDataset(str(lm_dataset))
    batches = BatchIterator(ds, batch_size=5, seed=3, rank=1, world_size=2, pad_to=8)
    seen = [next(batches) for _ in range(4)]
    state = json.loads(json.dumps(batches.state_dict()))
    expected = [next(batches) for _ in range(len(ds))]  # crosses several epochs
    assert batches.epoch >= 2 and all(b["input_ids"].shape == (5, 8) for b in seen + expected)
    resumed = BatchIterator(ds, batch_size=5, seed=3, rank=1, world_size=2, pad_to=8)
    resumed.load_state_dict(state)
    for a, b in zip(expected, (next(resumed) for _ in range(len(expected)))):
        assert all(torch.equal(a[k], b[k]) for k in a)
    other_rank = BatchIterator(ds, batch_size=5, seed=3, rank=0, world_size=2, pad_to=8)
    assert not torch.equal(next(other_rank)["input_ids"], seen[0]["input_ids"])


def test_ranks_read_blocks_of_one_global_order(lm_dataset):
    """2 ranks x 3 read together what 1 rank x 6 reads, batch by batch, across epochs; a
    position saved on either side continues on the other (resume on another rank count)."""
    ds = TokenDataset(str(lm_dataset))
    steps = len(ds)  # several epochs of global batches of 6
    single = BatchIterator(ds, batch_size=6, seed=3, pad_to=64)
    pair = [BatchIterator(ds, batch_size=3, seed=3, rank=r, world_size=2, pad_to=64)
            for r in range(2)]
    for _ in range(steps):
        expected = next(single)["input_ids"]
        got = torch.cat([next(it)["input_ids"] for it in pair])
        assert torch.equal(expected, got)
    assert single.epoch >= 2
    # save on 2 ranks, continue on 1, and the reverse
    state = json.loads(json.dumps(pair[1].state_dict()))
    assert state == pair[0].state_dict()
    resumed = BatchIterator(ds, batch_size=6, seed=3, pad_to=64)
    resumed.load_state_dict(state)
    following = next(single)["input_ids"]
    assert torch.equal(next(resumed)["input_ids"], following)
    back = [BatchIterator(ds, batch_size=3, seed=3, rank=r, world_size=2, pad_to=64)
            for r in range(2)]
    for it in back:
        it.load_state_dict(json.loads(json.dumps(resumed.state_dict())))
    assert torch.equal(torch.cat([next(it)["input_ids"] for it in back]), next(single)["input_ids"])
    with pytest.raises(ValueError, match="global batch 6 .* not seed 3, global batch 8"):
        BatchIterator(ds, batch_size=4, seed=3, world_size=2, rank=0).load_state_dict(state)


def test_batch_iterator_sequential_and_prefix_loss(alpaca_dataset):
    ds = TokenDataset(str(alpaca_dataset))
    batches = BatchIterator(ds, batch_size=4, seed=0, shuffle=False, prefix_lm_loss=True)
    batch = next(batches)
    for row in range(4):
        sample = ds[row]
        n = len(sample.tokens) - 1
        assert batch["input_ids"][row, :n].tolist() == sample.tokens[:-1].tolist()
        assert batch["loss_mask"][row].nonzero().flatten().tolist() == list(range(sample.prompt_length - 1, n))
    with pytest.raises(DatasetError):
        BatchIterator(ds, batch_size=1, seed=0, world_size=100)


def test_prefetcher_hands_out_the_same_batches_and_the_state_of_the_last_one(lm_dataset):
    """Batches made ahead on a thread: same batches, and a state that resumes at the next batch
    the consumer would see, not at the ones already made ahead."""
    from tencentpretrain.data import Prefetcher
    ds = TokenDataset(lm_dataset)
    plain = BatchIterator(ds, batch_size=5, seed=3, pad_to=8)
    ahead = Prefetcher(BatchIterator(ds, batch_size=5, seed=3, pad_to=8), depth=3)
    try:
        for _ in range(4):
            expected, got = next(plain), next(ahead)
            assert all(torch.equal(expected[k], got[k]) for k in ("input_ids", "labels", "loss_mask"))
        assert ahead.state_dict() == plain.state_dict()
        resumed = BatchIterator(ds, batch_size=5, seed=3, pad_to=8)
        resumed.load_state_dict(ahead.state_dict())
        assert torch.equal(next(resumed)["input_ids"], next(ahead)["input_ids"])
    finally:
        ahead.close()


def test_prefetcher_raises_the_producer_error_in_the_consumer():
    from tencentpretrain.data import Prefetcher

    class Failing:
        def state_dict(self):
            return {}

        def __next__(self):
            raise DatasetError("shard 3 is truncated")

    with pytest.raises(DatasetError, match="shard 3 is truncated"):
        next(Prefetcher(Failing()))
