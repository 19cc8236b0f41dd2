"""Batches made ahead of time, on a background thread, so collation never holds up a step.

Reading samples and collating them is numpy and torch work that releases the GIL, so a
thread overlaps it with the model's forward and backward. On a GPU the batches are
pinned, so ``batch_to(..., non_blocking=True)`` copies them asynchronously. The state of a
``Prefetcher`` is that of the last batch handed out, not of the batches made ahead, so a
checkpoint still resumes at exactly the next batch the model would have seen.
"""
import queue
import threading

import torch


class Prefetcher:
    def __init__(self, batches, depth=2, pin_memory=False):
        """``batches``: an iterator with ``state_dict()`` (a BatchIterator, already resumed)."""
        self._batches, self._pin = batches, pin_memory
        self._state = batches.state_dict()
        self._ready = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="batch-prefetch", daemon=True)
        self._thread.start()

    def _fill(self):
        try:
            while not self._stop.is_set():
                batch = next(self._batches)
                if self._pin:
                    batch = {k: v.pin_memory() if torch.is_tensor(v) else v
                             for k, v in batch.items()}
                self._put((batch, self._batches.state_dict(), None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            self._put((None, None, error))

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        return self

    def __next__(self):
        batch, state, error = self._ready.get()
        if error is not None:
            self.close()
            raise error
        self._state = state
        return batch

    def state_dict(self):
        return dict(self._state)

    def close(self):
        self._stop.set()
        self._thread.join()
