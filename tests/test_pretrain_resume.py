"""Exact resume in one process: 8 steps == 4 steps, stop, resume to 8 (bitwise on CPU)."""
import torch

from tencentpretrain.training.checkpointing import read_latest
from tencentpretrain.utils.weights import load_state_dict_file
from tests.training_support import copy_save, logged_losses, pretrain_argv, run_in_process


def test_resume_is_bitwise_exact(tmp_path, capsys):
    full = str(tmp_path / "full" / "m")
    run_in_process(pretrain_argv(full, steps=8, save=4))
    unbroken = logged_losses(capsys.readouterr().out)

    # a run "killed" after its step-4 save: only that save and its latest are left
    resumed = str(tmp_path / "resumed" / "m")
    run_in_process(pretrain_argv(resumed, steps=8, save=4, extra=[
        "--resume_from_checkpoint", copy_save(full, resumed, 4)]))
    log = capsys.readouterr().out
    after = logged_losses(log)
    assert "schedule differs" not in log  # same options: no note

    assert sorted(after) == [5, 6, 7, 8]
    assert all(after[s] == unbroken[s] for s in after)
    a, b = load_state_dict_file(full + "-8"), load_state_dict_file(resumed + "-8")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_latest(resumed + ".checkpoints") == "global_step8"
