"""Packing whole examples into samples: first-fit decreasing within fixed blocks.

Examples are taken in corpus order, in blocks of PACK_BLOCK; within a block the longest
goes first, each into the first sample with room. The result depends only on the sequence
of example lengths, never on how many workers tokenized them, and no example is split.
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
