"""What a new user pasting TencentPretrain command lines meets first: a DeepSpeed run
without the launcher, a TencentPretrain dataset file, --log_path, a vocab_size key, what a
run reports (first step, summary, a changed schedule on resume), argparse on every rank."""
import json
import logging
import os
import re

import pytest
from deepspeed.utils import logger as deepspeed_logger

import tencentpretrain
from tencentpretrain import ConfigError
import pretrain
from tencentpretrain.training import TrainingError
from tencentpretrain.training.logs import close_logging, setup_logging
from tests.training_support import (TINY, VOCAB_SIZE, ZERO3, logged_losses, pretrain_argv,
                                         run_in_process, run_script)


def test_a_run_without_a_launcher_gets_the_environment_of_one_rank(monkeypatch):
    """What ``pretrain.py --deepspeed`` does first when no launcher started it (the run itself:
    the slow test below): torchrun's variables for one rank on a free local port, so DeepSpeed
    does not probe for MPI; under a launcher nothing is touched."""
    import socket
    from tencentpretrain.training.settings import Launch, single_rank_environment
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "OMPI_COMM_WORLD_SIZE")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    assert single_rank_environment()
    assert {name: os.environ.get(name) for name in names[:5]} == {
        "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1"}
    with socket.socket() as s:  # the port is free
        s.bind(("127.0.0.1", int(os.environ["MASTER_PORT"])))
    assert Launch.from_environment() == Launch(rank=0, local_rank=0, world_size=1)
    for launched in ({"RANK": "1", "WORLD_SIZE": "2"}, {"OMPI_COMM_WORLD_SIZE": "2"}):
        for name in names:
            monkeypatch.delenv(name, raising=False)
        for name, value in launched.items():
            monkeypatch.setenv(name, value)
        assert not single_rank_environment()
        assert {name: os.environ.get(name) for name in names} == {
            name: launched.get(name) for name in names}


# a DeepSpeed run, seconds to start and a JIT-built CPU op the first time (make test runs it;
# the environment it needs is checked in make test-fast by the test above)
@pytest.mark.slow
def test_deepspeed_without_the_launcher_runs_one_rank(tmp_path):
    out = str(tmp_path / "m")
    result = run_script(pretrain_argv(out, steps=2, save=2, extra=[
        "--deepspeed", "--deepspeed_config", ZERO3, "--enable_zero3"]))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "running one rank" in result.stdout
    assert sorted(logged_losses(result.stdout)) == [1, 2]
    assert tencentpretrain.load_model(TINY, out).vocab_size == VOCAB_SIZE


def test_a_tencentpretrain_dataset_file_asks_to_rerun_preprocess(tmp_path):
    pt = tmp_path / "dataset.pt"
    pt.write_bytes(b"\x80\x04old pickle")
    argv = pretrain_argv(str(tmp_path / "m"))
    argv[argv.index("--dataset_path") + 1] = str(pt)
    with pytest.raises(TrainingError, match=r"dataset\.pt is a file .*re-run preprocess\.py"):
        run_in_process(argv)


def test_log_path_writes_the_run_log(tmp_path, capsys):
    log = tmp_path / "logs" / "train.log"
    run_in_process(pretrain_argv(str(tmp_path / "m"), steps=2, save=2,
                                 extra=["--log_path", str(log), "--log_level", "WARNING"]))
    assert logged_losses(capsys.readouterr().out) == {}  # the terminal shows warnings only
    text = log.read_text()
    assert sorted(logged_losses(text)) == [1, 2]
    assert "INFO training " in text and "finished steps 1..2" in text


def test_vocab_size_in_a_model_config_is_refused(tmp_path):
    config = json.load(open(TINY))
    config["vocab_size"] = 32000
    path = tmp_path / "with_vocab.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r'"vocab_size" in .*with_vocab\.json: remove it; the '
                                          r"vocabulary size comes from the tokenizer"):
        tencentpretrain.load_config(str(path))


def reported_lr(log, step):
    return float(re.search(rf"step\s+{step}/\d+ \| loss [0-9.]+ \| lr ([0-9.e+-]+)", log).group(1))


def test_first_step_summary_and_a_longer_resumed_schedule(tmp_path, capsys):
    out, tb, log_path = str(tmp_path / "m"), str(tmp_path / "tb"), str(tmp_path / "run.log")
    run_in_process(pretrain_argv(out, steps=4, save=4, extra=[
        "--report_steps", "3", "--tensorboard_dir", tb, "--log_path", log_path]))
    log = capsys.readouterr().out
    losses = logged_losses(log)
    assert sorted(losses) == [1, 3, 4]  # the first step, every --report_steps, the last
    summary = log[log.index("finished steps 1..4"):].splitlines()
    assert summary[0].endswith(f"loss first {losses[1]:.4f}, last {losses[4]:.4f}, "
                               f"best {min(losses.values()):.4f}")
    assert summary[1:] == [f"  final weights  {out} (each save: {out}-STEP)",
                           f"  checkpoints    {out}.checkpoints (--resume_from_checkpoint)",
                           f"  TensorBoard    {tb} (tensorboard --logdir {tb})",
                           f"  run log        {log_path}"]
    for path in (out, out + "-4", out + ".checkpoints", tb, log_path):
        assert os.path.exists(path), path

    # resumed with a larger --total_steps: said once, and the new schedule applies at once
    run_in_process(pretrain_argv(out, steps=8, save=8, extra=[
        "--resume_from_checkpoint", out + ".checkpoints"]))
    log = capsys.readouterr().out
    assert ("note: the learning-rate schedule differs from the saved run's (--total_steps 4 -> 8): "
            "step 5 trains at lr 5.000e-04 instead of 0.000e+00") in log.splitlines()
    assert reported_lr(log, 5) == 5e-4 and reported_lr(log, 8) == 1.25e-4  # linear to 0 at 8


@pytest.mark.parametrize("rank, shown", [("0", True), ("1", False)])
def test_argparse_prints_usage_and_help_on_rank_0_only(monkeypatch, capsys, rank, shown):
    monkeypatch.setenv("RANK", rank)
    for argv, code, stream in ((["--bogus"], 2, "err"), (["--help"], 0, "out")):
        with pytest.raises(SystemExit) as exit_:
            pretrain.main(argv)
        assert exit_.value.code == code  # every rank stops alike
        text = getattr(capsys.readouterr(), stream)
        assert ("usage: " in text) == shown, text


def test_deepspeed_logger_shows_warnings_unless_log_level_asks_otherwise():
    expected = {"DEBUG": logging.DEBUG, "INFO": logging.WARNING, "WARNING": logging.WARNING,
                "ERROR": logging.ERROR}
    try:
        for log_level, level in expected.items():
            setup_logging(0, log_level)
            assert deepspeed_logger.level == level
            # DeepSpeed may attach its handler more than once: we own the levels, not the count
            assert {h.level for h in deepspeed_logger.handlers} <= {level}
    finally:
        close_logging()
    assert deepspeed_logger.level == logging.WARNING


def test_files_a_run_writes_are_readable_under_umask_0022(tmp_path, capsys):
    umask = os.umask(0o022)
    try:
        run_in_process(pretrain_argv(str(tmp_path / "m"), steps=1, save=1, extra=[
            "--log_path", str(tmp_path / "run.log"), "--tensorboard_dir", str(tmp_path / "tb")]))
    finally:
        os.umask(umask)
    modes = {os.path.relpath(os.path.join(folder, name), tmp_path):
             os.stat(os.path.join(folder, name)).st_mode & 0o777
             for folder, _, names in os.walk(tmp_path) for name in names}
    assert {"m", "m-1", "run.log", "m.checkpoints/latest", "m.checkpoints/global_step1/model.bin",
            "m.checkpoints/global_step1/training_states.pt",
            "m.checkpoints/global_step1/trainer_state_rank0.json"} < modes.keys()
    assert {path: mode for path, mode in modes.items() if mode != 0o644} == {}


def test_help_explains_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        pretrain.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for option, default in (("--save_checkpoint_steps", "10000"), ("--report_steps", "100"),
                            ("--total_steps", None), ("--log_level", "INFO")):
        help_text = re.search(rf"{option} [A-Z_{{}},]+ (.*?) \(default: ([^)]*)\)", text)
        assert help_text and len(help_text.group(1)) > 20, option  # a sentence, not nothing
        assert default is None or help_text.group(2) == default, option
