"""Real 2-rank DeepSpeed ZeRO-3 runs of pretrain.py (CPU: gloo + DeepSpeed's CPU accelerator).

Three launches: lm pre-training with DeepSpeed's activation checkpointing (saving at steps
3 and 6), a resume of it from step 3, and alpaca instruction tuning with --prefix_lm_loss
from the lm run's weights. Each is checked against the one-process backend on the same
global batch: 2 ranks x batch 2 read exactly the samples one process reads with batch 4.
"""
import json
import os
import re
import shutil

import pytest
import torch

import tencentpretrain
from tencentpretrain.utils.weights import load_state_dict_file
from tests.training_support import (TINY, VOCAB_SIZE, ZERO3, logged_losses, pretrain_argv,
                                         run_in_process, run_script)

LAUNCHER = ["deepspeed", "--num_gpus", "2"]
DEEPSPEED = ["--deepspeed", "--deepspeed_config", ZERO3, "--enable_zero3", "--world_size", "2"]


def launch(argv, launcher=LAUNCHER):
    result = run_script(argv, launcher=launcher)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def one_process(argv, capsys):
    run_in_process(argv)
    return logged_losses(capsys.readouterr().out)


def assert_same_run(zero3_losses, plain_losses, zero3_weights=None, plain_weights=None):
    assert sorted(zero3_losses) == sorted(plain_losses)
    for step in plain_losses:
        assert zero3_losses[step] == pytest.approx(plain_losses[step], abs=2e-4), step
    if zero3_weights:
        a, b = load_state_dict_file(zero3_weights), load_state_dict_file(plain_weights)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4)


LEFT_IN_SHM = set()  # by the lm run


def shm_buffers():
    """DeepSpeed's CPU all-reduce segments in RAM-backed /dev/shm."""
    return {n for n in os.listdir("/dev/shm") if n.startswith("deepspeed_allreduce_buffer")} \
        if os.path.isdir("/dev/shm") else set()


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("zero3_lm") / "m")
    before = shm_buffers()
    log = launch(pretrain_argv(out, steps=6, save=3, batch=2, extra=DEEPSPEED + [
        "--deepspeed_checkpoint_activations", "--deepspeed_checkpoint_layers_num", "1"]))
    LEFT_IN_SHM.update(shm_buffers() - before)
    return out, log


def test_zero3_run_leaves_nothing_in_dev_shm(lm_run):
    """DeepSpeed never unlinks its 64 MiB per rank; repeated CPU runs filled a 24 GiB machine."""
    assert not LEFT_IN_SHM


def test_zero3_partitions_the_model(lm_run):
    _, log = lm_run
    pattern = (r"rank 0 stores ([\d,]+) of ([\d,]+) parameter elements; whole parameters "
               r"exist only while a layer runs \(([\d,]+) elements held whole now\)")
    stored, full, visible = (int(n.replace(",", "")) for n in re.search(pattern, log).groups())
    model = tencentpretrain.build_model(TINY, VOCAB_SIZE, device="meta")
    assert full == sum(p.numel() for p in model.parameters())
    assert stored <= full // 2 + 64 and visible == 0


def test_zero3_run_prints_rank_0_lines_and_deepspeed_warnings_only(lm_run):
    _, log = lm_run
    assert log.count("\ntraining ") == 1 and log.count("finished steps 1..6") == 1  # rank 0 only
    # DeepSpeed's CPU notice comes from the launcher's two processes, none from the ranks
    assert log.count("Setting accelerator to CPU") == 2
    assert "built successfully" not in log  # its per-rank print while initialising
    # the ranks' DeepSpeed logger stays at warnings: info lines are the launcher's only
    assert set(re.findall(r"\[INFO\] \[(\w+)\.py:", log)) <= {"runner", "launch"}


def test_zero3_with_activation_checkpointing_trains_like_one_process(lm_run, tmp_path, capsys):
    out, log = lm_run
    plain = one_process(pretrain_argv(str(tmp_path / "m"), steps=6, save=6, batch=4), capsys)
    assert_same_run(logged_losses(log), plain, out + "-6", str(tmp_path / "m-6"))


def test_zero3_outputs(lm_run):
    out, _ = lm_run
    model = tencentpretrain.load_model(TINY, out + "-6")  # no zero_to_fp32 step
    assert model.vocab_size == VOCAB_SIZE
    checkpoints = out + ".checkpoints"
    assert open(os.path.join(checkpoints, "latest")).read() == "global_step6"
    for tag in ("global_step3", "global_step6"):
        files = set(os.listdir(os.path.join(checkpoints, tag)))
        for rank in (0, 1):  # DeepSpeed's own per-rank layout, plus our per-rank state
            assert f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in files
            assert f"trainer_state_rank{rank}.json" in files


def test_zero3_resume_is_exact(lm_run, tmp_path):
    out, log = lm_run
    resumed = str(tmp_path / "m")
    shutil.copytree(out + ".checkpoints/global_step3", resumed + ".checkpoints/global_step3")
    with open(resumed + ".checkpoints/latest", "w") as f:  # as if killed after the step-3 save
        f.write("global_step3")
    resumed_log = launch(pretrain_argv(resumed, steps=6, save=3, batch=2, extra=DEEPSPEED + [
        "--deepspeed_checkpoint_activations", "--resume_from_checkpoint",
        resumed + ".checkpoints"]))
    before, after = logged_losses(log), logged_losses(resumed_log)
    assert sorted(after) == [4, 5, 6] and all(after[s] == before[s] for s in after)
    a, b = load_state_dict_file(out + "-6"), load_state_dict_file(resumed + "-6")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_zero3_alpaca_prefix_lm_loss_from_pretrained(lm_run, tmp_path, capsys):
    """Loading the pretrained file into partitioned parameters gives the same model as a
    one-process load: step 1's loss (before any update) and every later step agree."""
    pretrained = lm_run[0] + "-6"
    extra = ["--prefix_lm_loss", "--pretrained_model_path", pretrained]
    log = launch(pretrain_argv(str(tmp_path / "z" / "m"), dataset="alpaca", steps=3, save=3,
                               batch=2, extra=DEEPSPEED + extra))
    plain = one_process(pretrain_argv(str(tmp_path / "p" / "m"), dataset="alpaca", steps=3,
                                      save=3, batch=4, extra=extra), capsys)
    assert_same_run(logged_losses(log), plain, str(tmp_path / "z" / "m-3"),
                    str(tmp_path / "p" / "m-3"))


def _latest_at(source_checkpoints, tag, target_output):
    """A copy of one save of a run, as if that run had been killed right after it."""
    shutil.copytree(os.path.join(source_checkpoints, tag),
                    os.path.join(target_output + ".checkpoints", tag))
    with open(target_output + ".checkpoints/latest", "w") as f:
        f.write(tag)
    return target_output + ".checkpoints"


def test_zero3_resume_on_another_number_of_ranks(lm_run, tmp_path):
    """2 ranks x 2 saved at step 3 -> 1 rank x 4 (saving every step) -> 2 ranks x 2 from its
    step 4: the same global batches, so the losses of the uninterrupted 2-rank run (up to
    fp32 reduction order, 2e-4 on the logged loss) and the same final data position."""
    out, log = lm_run
    uninterrupted = logged_losses(log)
    one = str(tmp_path / "one" / "m")
    one_log = launch(pretrain_argv(one, steps=6, save=1, batch=4, extra=[
        "--deepspeed", "--deepspeed_config", ZERO3, "--enable_zero3",
        "--resume_from_checkpoint", _latest_at(out + ".checkpoints", "global_step3", one)]),
        launcher=["deepspeed", "--num_gpus", "1"])
    assert "resuming 2 rank(s) -> 1" in one_log
    two = str(tmp_path / "two" / "m")
    two_log = launch(pretrain_argv(two, steps=6, save=3, batch=2, extra=DEEPSPEED + [
        "--resume_from_checkpoint", _latest_at(one + ".checkpoints", "global_step4", two)]))
    assert "resuming 1 rank(s) -> 2" in two_log
    one_losses, two_losses = logged_losses(one_log), logged_losses(two_log)
    assert sorted(one_losses) == [4, 5, 6] and sorted(two_losses) == [5, 6]
    for step, loss in list(one_losses.items()) + list(two_losses.items()):
        assert loss == pytest.approx(uninterrupted[step], abs=2e-4), step
    data = [json.load(open(os.path.join(run + ".checkpoints", "global_step6",
                                        "trainer_state_rank0.json")))["data"]
            for run in (out, one, two)]
    assert data[0] == data[1] == data[2]
    a, b = load_state_dict_file(out + "-6"), load_state_dict_file(two + "-6")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4)
