"""Packing: several whole examples in one sample, each trained as if it were alone.

The one owner of the fact, on both sides, and its one vocabulary:

- writing (preprocess.py --packing): ``pack_order`` puts examples into samples, first-fit
  decreasing within fixed blocks: examples are taken in corpus order, in blocks of
  PACK_BLOCK; within a block the longest goes first, each into the first sample with room.
  The result depends only on the sequence of example lengths, never on how many workers
  tokenized them, and no example is split. meta.json declares ``"holds": {"packed": true}``
  (data/format.py ``Holds``; format_version 2, so older readers refuse it).
- reading: a packed ``Sample`` carries ``example_prompts`` (one prompt length per example);
  ``collate`` gives each example its own labels and loss mask and marks the batch
  ``isolate_segments``, with ``position_ids`` from ``positions`` below.
- the model: ``positions`` is the one place position ids are made (restarting at 0 in each
  example when isolated), and ``layers/masks.attention_mask`` the one place that decides how
  isolated examples attend (dense / spans / block mask).
"""
import numpy as np

PACK_BLOCK = 4096  # examples per packing block: bigger fills better, costs O(block x samples)


def first_fit_decreasing(lengths, capacity):
    """Bins of example indices (each ascending, in corpus order) holding at most `capacity`
    tokens, in the order they were opened. Every length must be <= capacity."""
    lengths = np.asarray(lengths, np.int64)
    if lengths.size and lengths.max() > capacity:
        raise ValueError(f"an example of {lengths.max()} tokens exceeds the capacity {capacity}")
    room = np.empty(len(lengths), np.int64)
    bins = []
    for index in np.argsort(-lengths, kind="stable"):
        fits = np.flatnonzero(room[:len(bins)] >= lengths[index])
        if fits.size:
            target = fits[0]
        else:
            target = len(bins)
            bins.append([])
            room[target] = capacity
        bins[target].append(index)
        room[target] -= lengths[index]
    return [np.sort(np.array(b, np.int64)) for b in bins]


def pack_order(lengths, capacity):
    """(example order, examples per sample) of one block packed by first_fit_decreasing."""
    bins = first_fit_decreasing(lengths, capacity)
    order = np.concatenate(bins) if bins else np.empty(0, np.int64)
    return order, np.array([len(b) for b in bins], np.int64)


def pack_block(lengths, capacity):
    """One block of examples packed: (gather, sample lengths, example order, example lengths
    in that order), where ``tokens[gather]`` lays the block's tokens out sample after sample
    (any per-token array of the block is gathered alike)."""
    order, per_sample = pack_order(lengths, capacity)
    starts = np.cumsum(lengths) - lengths
    packed_lengths = lengths[order]
    packed_starts = np.cumsum(packed_lengths) - packed_lengths
    gather = np.repeat(starts[order] - packed_starts, packed_lengths) + np.arange(lengths.sum())
    sample_lengths = np.add.reduceat(packed_lengths, np.cumsum(per_sample) - per_sample)
    return gather, sample_lengths, order, packed_lengths


def run_starts(seg):
    """True where a run of equal ``seg`` begins (a new document or example; a run of padding
    counts as one): the first position, and wherever ``seg`` changes. ``seg``: a torch tensor."""
    opens = seg.new_ones(seg.shape, dtype=bool)
    opens[..., 1:] = seg[..., 1:] != seg[..., :-1]
    return opens


def document_positions(seg):
    """Position ids [batch, seq] that restart at 0 at every ``run_starts``."""
    import torch  # here, so that preprocessing never pays for importing torch
    index = torch.arange(seg.shape[-1], device=seg.device).expand_as(seg)
    return index - torch.where(run_starts(seg), index, 0).cummax(-1).values


def positions(batch, seq, past=0, device=None, seg=None, isolated=False):
    """The position ids [batch, seq] of every forward: per example (``document_positions``)
    when its examples are isolated, else past, past + 1, ..."""
    if isolated:
        return document_positions(seg)
    import torch
    return torch.arange(past, past + seq, device=device).expand(batch, seq)
