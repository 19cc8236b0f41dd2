"""Batches for training: deterministic per-epoch order, rank split, padding and loss masks."""
import numpy as np

from .format import DatasetError


def sample_order(num_samples, seed, epoch, rank, world_size):
    """The sample indices rank `rank` reads in `epoch` (np.int64).

    A permutation drawn from numpy's Generator seeded with (seed, epoch) is cut to a multiple
    of world_size (the remainder, fewer than world_size samples, is dropped for that epoch so
    every rank has the same count) and dealt out strided: rank r takes positions r, r + W, ...
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    order = np.random.default_rng([seed, epoch]).permutation(num_samples)
    return order[:num_samples - num_samples % world_size][rank::world_size].astype(np.int64)


def collate(samples, pad_id, prefix_lm_loss=False, pad_to=None):
    """Pad samples into [B, S] int64/bool torch tensors, S = pad_to or longest length - 1.

    input_ids = tokens[:-1], labels = tokens[1:] (padding: pad_id); loss_mask is True where the
    label is a real token and, with prefix_lm_loss, inside the answer (label index t >=
    prompt_length - 1: the answer and its eos count, no prompt token does); seg is the segment
    of the input token, 0 at padding. A single-token sample has nothing to predict: its row is
    all padding with an all-False mask. S is at least 1.

    Packed samples (``example_prompts`` set) hold several examples: each gets the mask an
    example alone would get (no label crosses into the next example), and the batch adds
    ``position_ids`` restarting per example and ``isolate_segments=True``, so the model keeps
    every example to its own attention window.
    """
    import torch  # here, so that preprocessing never pays for importing torch

    from tencentpretrain.layers.masks import document_positions

    width = max(max(len(s.tokens) for s in samples) - 1, 1) if pad_to is None else pad_to
    shape = (len(samples), width)
    input_ids = np.full(shape, pad_id, np.int64)
    labels = np.full(shape, pad_id, np.int64)
    loss_mask = np.zeros(shape, bool)
    seg = np.zeros(shape, np.int64)
    for row, sample in enumerate(samples):
        n = len(sample.tokens) - 1
        if n > width:
            raise ValueError(f"sample of {n + 1} tokens does not fit pad_to={pad_to}")
        input_ids[row, :n] = sample.tokens[:-1]
        labels[row, :n] = sample.tokens[1:]
        seg[row, :n] = sample.segments[:-1]
        for start, end, prompt_length in _examples(sample):
            first = start + (max(prompt_length - 1, 0) if prefix_lm_loss else 0)
            loss_mask[row, first:end - 1] = True
    batch = {name: torch.from_numpy(array) for name, array in
             (("input_ids", input_ids), ("labels", labels), ("loss_mask", loss_mask), ("seg", seg))}
    if any(sample.example_prompts is not None for sample in samples):
        batch["position_ids"] = document_positions(batch["seg"])
        batch["isolate_segments"] = True
    return batch


def batch_to(batch, device):
    """The batch with its tensors on `device` (flags such as isolate_segments stay as they are)."""
    return {name: value.to(device) if hasattr(value, "to") else value for name, value in batch.items()}


def _examples(sample):
    """(start, end, prompt_length) of each example (token range) whose labels count: the whole
    sample unless it is packed."""
    if sample.example_prompts is None:
        return [(0, len(sample.tokens), sample.prompt_length)]
    starts = np.flatnonzero(np.diff(sample.segments, prepend=0))
    ends = np.append(starts[1:], len(sample.tokens))
    return zip(starts.tolist(), ends.tolist(), sample.example_prompts.tolist())


class BatchIterator:
    """Endless batches of one rank's share of a dataset, resumable to the exact next batch.

    The rank's order for an epoch comes from `sample_order` (or is sequential with
    shuffle=False); a batch that reaches the end of an epoch continues with the next epoch's
    order, so every batch is full. The state is just (epoch, position in the rank's order).
    """

    def __init__(self, dataset, batch_size, seed, rank=0, world_size=1, prefix_lm_loss=False,
                 pad_to=None, shuffle=True):
        per_rank = len(dataset) // world_size
        if per_rank == 0:
            raise DatasetError(f"{getattr(dataset, 'path', 'dataset')}: {len(dataset)} samples "
                               f"cannot be split over {world_size} ranks")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.prefix_lm_loss, self.pad_to = prefix_lm_loss, pad_to
        self.epoch, self.position = 0, 0
        self._order, self._order_epoch = None, None

    def order(self, epoch):
        """This rank's sample indices for an epoch (one int64 array, cached)."""
        if self._order_epoch != epoch:
            if self.shuffle:
                self._order = sample_order(len(self.dataset), self.seed, epoch, self.rank, self.world_size)
            else:
                n = len(self.dataset)
                self._order = np.arange(n - n % self.world_size, dtype=np.int64)[self.rank::self.world_size]
            self._order_epoch = epoch
        return self._order

    def __iter__(self):
        return self

    def __next__(self):
        indices = []
        while len(indices) < self.batch_size:
            order = self.order(self.epoch)
            take = order[self.position:self.position + self.batch_size - len(indices)]
            indices.extend(take.tolist())
            self.position += len(take)
            if self.position == len(order):
                self.epoch, self.position = self.epoch + 1, 0
        samples = [self.dataset[i] for i in indices]
        return collate(samples, self.dataset.pad_id, self.prefix_lm_loss, self.pad_to)

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state):
        """Continue with the batch that followed when `state` was taken."""
        if (state.get("seed", self.seed), state.get("world_size", self.world_size)) != (self.seed, self.world_size):
            raise ValueError(f"batch state was saved with seed/world_size {state.get('seed')}/"
                             f"{state.get('world_size')}, not {self.seed}/{self.world_size}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
