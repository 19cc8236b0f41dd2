"""A real 2-rank DeepSpeed ZeRO-3 run of pretrain.py on a packed alpaca dataset (one launch)."""
import pytest

from tests.training_support import datasets, logged_losses, pretrain_argv, run_script, ZERO3

LAUNCHER = ["deepspeed", "--num_gpus", "2"]
DEEPSPEED = ["--deepspeed", "--deepspeed_config", ZERO3, "--enable_zero3", "--world_size", "2"]
STEPS = 10


@pytest.fixture(scope="module")
def packed_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("zero3_packed") / "m")
    result = run_script(pretrain_argv(out, dataset="alpaca_packed", steps=STEPS, save=STEPS, batch=2,
                                      extra=DEEPSPEED + ["--prefix_lm_loss", "--learning_rate", "2e-3"]),
                        launcher=LAUNCHER)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_zero3_on_packed_alpaca_lowers_the_loss(packed_run):
    assert f"{datasets()['alpaca_packed']} is packed: every example attends" in packed_run
    assert "ZeRO-3: rank 0 stores" in packed_run
    losses = logged_losses(packed_run)
    assert sorted(losses) == list(range(1, STEPS + 1))
    first, last = losses[1] + losses[2], losses[STEPS - 1] + losses[STEPS]
    assert last < first - 1.0, losses
