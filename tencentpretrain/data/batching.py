"""Batches for training: deterministic per-epoch order, rank split, padding and loss masks."""
import numpy as np

from tencentpretrain.data.format import DatasetError
from tencentpretrain.data.packing import positions


def epoch_order(num_samples, seed, epoch, shuffle=True):
    """All sample indices of one epoch, in training order (np.int64).

    A permutation drawn from numpy's Generator seeded with (seed, epoch), or 0..n-1 with
    shuffle=False. The same on every rank and for every number of ranks: ranks only cut
    their share out of it (see BatchIterator), so a run can resume on another rank count.
    """
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(num_samples).astype(np.int64)


def sample_order(num_samples, seed, epoch, rank, world_size, batch_size=1):
    """The sample indices rank ``rank`` reads in the whole global batches of ``epoch``
    (a test and inspection helper; training streams across epochs with BatchIterator)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    order = epoch_order(num_samples, seed, epoch)
    step = batch_size * world_size
    blocks = order[:num_samples - num_samples % step].reshape(-1, world_size, batch_size)
    return blocks[:, rank].reshape(-1)


def collate(samples, pad_id, prefix_lm_loss=False, pad_to=None):
    """Pad samples into [B, S] int64/bool torch tensors, S = pad_to or longest length - 1.

    input_ids = tokens[:-1], labels = tokens[1:] (padding: pad_id); loss_mask is True where the
    label is a real token and, with prefix_lm_loss, inside the answer (label index t >=
    prompt_length - 1: the answer and its eos count, no prompt token does); seg is the segment
    of the input token, 0 at padding. A single-token sample has nothing to predict: its row is
    all padding with an all-False mask. S is at least 1.

    Packed samples (``example_prompts`` set) hold several examples: each gets the mask an
    example alone would get (no label crosses into the next example), and the batch adds
    ``position_ids`` restarting per example (``packing.positions``, which the model would
    make alike) and ``isolate_segments=True``, so the model keeps every example to its own
    attention window.
    """
    import torch  # here, so that preprocessing never pays for importing torch

    if samples and samples[0].seq2seq:  # source/target samples: encoder-decoder batches
        from tencentpretrain.data.seq2seq import collate_seq2seq
        return collate_seq2seq(samples, pad_id)
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
            if prefix_lm_loss and sample.loss_mask is not None:  # conversation: trained labels
                loss_mask[row, start:end - 1] = sample.loss_mask[start + 1:end]
                continue
            first = start + (max(prompt_length - 1, 0) if prefix_lm_loss else 0)
            loss_mask[row, first:end - 1] = True
    batch = {name: torch.from_numpy(array) for name, array in
             (("input_ids", input_ids), ("labels", labels), ("loss_mask", loss_mask), ("seg", seg))}
    if any(sample.example_prompts is not None for sample in samples):
        batch["position_ids"] = positions(*shape, seg=batch["seg"], isolated=True)
        batch["isolate_segments"] = True
    return batch


def batch_to(batch, device):
    """The batch with its tensors on `device` (flags such as isolate_segments stay as they are);
    asynchronous from pinned memory (``Prefetcher``)."""
    return {name: value.to(device, non_blocking=True) if hasattr(value, "to") else value
            for name, value in batch.items()}


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

    All ranks walk one global stream: the epoch orders of ``epoch_order`` one after the
    other (a batch that reaches the end of an epoch continues into the next, so every batch
    is full and no sample is dropped). Each micro-batch takes the next ``world_size x
    batch_size`` samples of the stream and rank r reads block r of them. The state is the
    position in that stream (epoch, samples consumed in it), the same on every rank, so a
    run saved on W ranks x B resumes on W' ranks x B' with W' x B' = W x B and reads exactly
    the samples the uninterrupted run would have read.
    """

    def __init__(self, dataset, batch_size, seed, rank=0, world_size=1, prefix_lm_loss=False,
                 pad_to=None, shuffle=True):
        if len(dataset) < world_size:
            raise DatasetError(f"{getattr(dataset, 'path', 'dataset')}: {len(dataset)} samples "
                               f"cannot be split over {world_size} ranks")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.prefix_lm_loss, self.pad_to = prefix_lm_loss, pad_to
        self.epoch, self.position = 0, 0
        self._order, self._order_epoch = None, None

    @property
    def global_batch_size(self):
        return self.batch_size * self.world_size

    def order(self, epoch):
        """All sample indices of an epoch (one int64 array, cached)."""
        if self._order_epoch != epoch:
            self._order = epoch_order(len(self.dataset), self.seed, epoch, self.shuffle)
            self._order_epoch = epoch
        return self._order

    def _take(self, count):
        """The next ``count`` indices of the global stream; advances the position."""
        indices = []
        while len(indices) < count:
            order = self.order(self.epoch)
            take = order[self.position:self.position + count - len(indices)]
            indices.extend(take.tolist())
            self.position += len(take)
            if self.position == len(order):
                self.epoch, self.position = self.epoch + 1, 0
        return indices

    def __iter__(self):
        return self

    def __next__(self):
        block = self._take(self.global_batch_size)
        mine = block[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        samples = [self.dataset[i] for i in mine]
        return collate(samples, self.dataset.pad_id, self.prefix_lm_loss, self.pad_to)

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "shuffle": self.shuffle, "global_batch_size": self.global_batch_size,
                "order": "global"}

    def load_state_dict(self, state):
        """Continue with the batch that followed when ``state`` was taken (on any number of
        ranks whose global batch is the same)."""
        if state.get("order") != "global":
            raise ValueError("the data position was saved by an older version with per-rank "
                             "sample orders; it cannot be continued")
        saved = (state["seed"], state["shuffle"], state["global_batch_size"])
        if saved != (self.seed, self.shuffle, self.global_batch_size):
            raise ValueError(
                f"the data position was saved with seed {saved[0]}, global batch {saved[2]} "
                f"(ranks x --batch_size), not seed {self.seed}, global batch "
                f"{self.global_batch_size}: keep --seed and ranks x --batch_size unchanged")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
