"""The trainer's resumable state is one TrainState, written and read in one place; files the
trainer wrote before it (a dict built by hand, with or without "schedule" / "run") load, and
a state saved now is the same JSON the old trainer wrote."""
import json
import random

import numpy as np
import pytest
import torch

from tencentpretrain.training.errors import TrainingError
from tencentpretrain.training.train_state import TrainState, rng_state, trainer_state_path

DATA = {"epoch": 1, "position": 8, "seed": 7, "shuffle": True, "global_batch_size": 4,
        "order": "global"}
SCHEDULE = {"learning_rate": 1e-3, "scheduler": "cosine", "warmup": 0.0, "lr_decay": 0.5,
            "total_steps": 6}


class Batches:
    def __init__(self):
        self.state = None

    def state_dict(self):
        return dict(DATA)

    def load_state_dict(self, state):
        self.state = state


@pytest.mark.parametrize("extra", [{}, {"schedule": SCHEDULE}, {"schedule": SCHEDULE, "run": {"a": 1}}])
def test_old_trainer_state_files_load_and_save_alike(tmp_path, extra):
    old = {"step": 3, "world_size": 2, "data": DATA, "rng": rng_state(), **extra}
    path = trainer_state_path(str(tmp_path), "global_step3", 1)
    (tmp_path / "global_step3").mkdir()
    with open(path, "w") as f:
        f.write(json.dumps(old))  # what trainer.save wrote before TrainState
    state = TrainState.load(str(tmp_path), "global_step3", 1)
    assert (state.step, state.world_size, state.schedule, state.run) == (
        3, 2, extra.get("schedule"), extra.get("run"))
    assert state.to_json() == json.dumps(old)
    state.save(str(tmp_path), "again", 0)
    assert open(trainer_state_path(str(tmp_path), "again", 0)).read() == json.dumps(old)
    # a rank the saving run did not have takes rank 0's file
    assert TrainState.load(str(tmp_path), "again", 5) == state


def test_capture_and_restore_round_trip(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = TrainState.capture(5, 1, Batches(), SCHEDULE, run={"r": 1})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    state.save(str(tmp_path), "t", 0)
    torch.rand(10), np.random.rand(10), random.random()
    batches = Batches()
    TrainState.load(str(tmp_path), "t", 0).restore(batches)
    assert batches.state == DATA
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_missing_or_malformed_state_is_one_line(tmp_path):
    with pytest.raises(TrainingError, match="is missing"):
        TrainState.load(str(tmp_path), "t", 0)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "trainer_state_rank0.json").write_text('{"step": 1}')
    with pytest.raises(TrainingError, match="malformed"):
        TrainState.load(str(tmp_path), "t", 0)
