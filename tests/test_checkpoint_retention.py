"""--save_total_limit, the final weights name, and the run summary (one process)."""
import collections
import os
import re

import pytest
import torch

from tencentpretrain.data import BatchIterator, TokenDataset
from tencentpretrain.training import TrainingError
from tencentpretrain.training.checkpointing import read_latest
from tencentpretrain.training.engine import TorchBackend
from tencentpretrain.utils.weights import WeightsError, load_state_dict_file
from tests.training_support import datasets, logged_losses, pretrain_argv, run_in_process


def saves(output):
    folders = sorted(os.listdir(output + ".checkpoints"))
    weights = sorted(name for name in os.listdir(os.path.dirname(output))
                     if re.fullmatch(r"m-\d+", name))
    return folders, weights


def test_keeps_the_newest_saves_and_the_final_weights(tmp_path, capsys):
    out = str(tmp_path / "m")
    run_in_process(pretrain_argv(out, steps=5, save=1, extra=["--save_total_limit", "2"]))
    log = capsys.readouterr().out
    assert saves(out) == (["global_step4", "global_step5", "latest"], ["m-4", "m-5"])
    assert read_latest(out + ".checkpoints") == "global_step5"
    final, last = load_state_dict_file(out), load_state_dict_file(out + "-5")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    losses = logged_losses(log)
    summary = re.search(r"finished steps 1\.\.5 in \d+:\d\d: ([\d,]+) tokens, [\d,]+ tokens/s, "
                        r"loss first [0-9.]+, last ([0-9.]+), best ([0-9.]+)", log)
    assert summary, log
    read = BatchIterator(TokenDataset(datasets()["lm"]), 4, seed=7)  # pretrain.py's default
    assert int(summary.group(1).replace(",", "")) == sum(
        int((next(read)["seg"] > 0).sum()) for _ in range(5))  # the input tokens of 5 steps
    assert float(summary.group(2)) == losses[5]
    assert float(summary.group(3)) == min(losses.values())
    assert re.search(r"step\s+3/5 \| loss .* \| elapsed \d+:\d\d \| ETA \d+:\d\d", log)


def test_a_save_killed_halfway_deletes_nothing(tmp_path, monkeypatch, capsys):
    """Killed while writing step 3's checkpoint: steps 1 and 2 stay complete and ``latest``
    names step 2; resuming from it reproduces the uninterrupted run."""
    out = str(tmp_path / "m")
    save_checkpoint = TorchBackend.save_checkpoint

    def killed_at_step_3(self, directory, tag):
        if tag == "global_step3":
            raise KeyboardInterrupt  # as if the process were killed mid-save
        save_checkpoint(self, directory, tag)

    monkeypatch.setattr(TorchBackend, "save_checkpoint", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_in_process(pretrain_argv(out, steps=4, save=1, extra=["--save_total_limit", "2"]))
    monkeypatch.setattr(TorchBackend, "save_checkpoint", save_checkpoint)
    folders, weights = saves(out)
    assert read_latest(out + ".checkpoints") == "global_step2"
    assert {"global_step1", "global_step2"} <= set(folders) and {"m-1", "m-2"} <= set(weights)
    assert not os.path.exists(out)  # no final weights: the run did not finish
    capsys.readouterr()

    run_in_process(pretrain_argv(out, steps=4, save=1, extra=[
        "--save_total_limit", "2", "--resume_from_checkpoint", out + ".checkpoints"]))
    resumed = logged_losses(capsys.readouterr().out)
    run_in_process(pretrain_argv(str(tmp_path / "u" / "m"), steps=4, save=4))
    unbroken = logged_losses(capsys.readouterr().out)
    assert sorted(resumed) == [3, 4] and all(resumed[s] == unbroken[s] for s in resumed)
    assert saves(out) == (["global_step3", "global_step4", "latest"], ["m-3", "m-4"])


def test_bad_retention_and_output_options(tmp_path):
    with pytest.raises(TrainingError, match="--save_total_limit must be positive, got 0"):
        run_in_process(pretrain_argv(str(tmp_path / "m"), extra=["--save_total_limit", "0"]))
    with pytest.raises(TrainingError, match=f"--output_model_path {tmp_path} is a folder"):
        run_in_process(pretrain_argv(str(tmp_path)))


@pytest.mark.parametrize("damage", ["truncated", "pickled code"])
def test_a_damaged_checkpoint_is_a_one_line_error(tmp_path, damage, capsys):
    out = str(tmp_path / "m")
    run_in_process(pretrain_argv(out, steps=2, save=2))
    states = os.path.join(out + ".checkpoints", "global_step2", "training_states.pt")
    if damage == "truncated":
        data = open(states, "rb").read()
        open(states, "wb").write(data[:len(data) // 2])
    else:
        torch.save({"optimizer": collections.OrderedDict(step=slice(1, 2))}, states)
    with pytest.raises(WeightsError, match=f"{re.escape(states)}: (truncated or corrupt "
                                           "training-state file|a pickle that needs code "
                                           "execution)"):
        run_in_process(pretrain_argv(out, steps=4, save=2, extra=[
            "--resume_from_checkpoint", out + ".checkpoints"]))


def test_temporaries_of_killed_saves_are_removed_at_the_next_start(tmp_path, capsys):
    out = tmp_path / "m"
    (tmp_path / "m.checkpoints" / "global_step1").mkdir(parents=True)
    dead = [tmp_path / "m-1.tmp-999999999",
            tmp_path / "m.checkpoints" / "global_step1" / "training_states.pt.tmp-999999999"]
    live = tmp_path / f"m-7.tmp-{os.getpid()}"  # this process: alive
    for path in dead + [live]:
        path.write_bytes(b"partial")
    run_in_process(pretrain_argv(str(out), steps=1, save=1))
    assert not any(path.exists() for path in dead) and live.exists()
    assert f"removed {dead[0]}, left by a save that was killed" in capsys.readouterr().out
