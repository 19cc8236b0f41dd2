"""The trainer's resumable state: one ``TrainState``, written and read here only.

Saved per rank as ``<checkpoints>/<tag>/trainer_state_rank<R>.json`` beside the backend's
own files (weights, optimizer, scheduler): plain JSON, so a save can be read without torch.
Files written before a field existed still load: ``schedule`` and ``run`` are then None.
"""
import dataclasses
import json
import os
import random
from typing import Optional

import numpy as np
import torch

from tencentpretrain.training.errors import TrainingError
from tencentpretrain.utils.files import read_json, write_text_atomic


def rng_state():
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {"torch": torch.get_rng_state().tolist(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
             "python": [py_state[0], list(py_state[1]), py_state[2]]}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state):
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def trainer_state_path(directory, tag, rank):
    return os.path.join(directory, tag, f"trainer_state_rank{rank}.json")


@dataclasses.dataclass
class TrainState:
    """Where a run stands after ``step``: what resuming restores beside the backend's files.

    data: the batch stream's position (``BatchIterator.state_dict``, global over ranks);
    rng: this rank's torch / numpy / Python (/ CUDA) RNG states;
    schedule: the options the learning rate followed (None: saved before they were recorded);
    run: what the run was started from (``checkpointing.run_record``; None: saved before).
    """
    step: int
    world_size: int
    data: dict
    rng: dict
    schedule: Optional[dict] = None
    run: Optional[dict] = None

    @classmethod
    def capture(cls, step, world_size, batches, schedule, run=None):
        """This process's state now (the RNG states are read here)."""
        return cls(step, world_size, batches.state_dict(), rng_state(), schedule, run)

    def restore(self, batches):
        """The data position into ``batches`` and the RNG states into this process;
        ValueError when the data position cannot be continued with these batches."""
        batches.load_state_dict(self.data)
        set_rng_state(self.rng)

    def to_json(self):
        """The file's JSON: the same keys as always (``schedule`` / ``run`` only when set)."""
        state = dataclasses.asdict(self)
        return json.dumps({k: v for k, v in state.items() if v is not None or k not in ("schedule", "run")})

    def save(self, directory, tag, rank):
        os.makedirs(os.path.join(directory, tag), exist_ok=True)
        write_text_atomic(trainer_state_path(directory, tag, rank), self.to_json())

    @classmethod
    def load(cls, directory, tag, rank):
        """This rank's saved state; a rank the saving run did not have (resuming on more
        ranks) takes rank 0's: the data position is global, only the RNG streams were per rank."""
        path = trainer_state_path(directory, tag, rank)
        if not os.path.isfile(path) and rank > 0:
            path = trainer_state_path(directory, tag, 0)
        if not os.path.isfile(path):
            raise TrainingError(f"--resume_from_checkpoint {directory}: {path} is missing (not a "
                                "pretrain.py checkpoint)")
        where = f"--resume_from_checkpoint {directory}: trainer state {path}"
        saved = read_json(path, TrainingError, where, expect=dict)
        try:
            return cls(step=int(saved["step"]), world_size=int(saved["world_size"]),
                       data=saved["data"], rng=saved["rng"], schedule=saved.get("schedule"),
                       run=saved.get("run"))
        except (KeyError, TypeError, ValueError) as e:
            raise TrainingError(f"{where}: malformed ({e!r})") from None
