"""Every bad input stops before the first step with one line naming the problem."""
import json
import os

import pytest
import torch

import tencentpretrain
from tencentpretrain.data import DatasetError
from tencentpretrain.errors import UserError
from tencentpretrain.utils.weights import save_state_dict_file
from tests.training_support import (CHINESE_SPM, OTHER_SPM, TINY, VOCAB_SIZE, ZERO2, ZERO3, datasets,
                                         pretrain_argv, run_in_process, run_script)


def replace(argv, option, value):
    argv = list(argv)
    argv[argv.index(option) + 1] = value
    return argv


@pytest.fixture(scope="module")
def small_max_seq_config(tmp_path_factory):
    with open(TINY) as f:
        config = json.load(f)
    config["max_seq_length"] = 32
    path = tmp_path_factory.mktemp("config") / "tiny_32.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.fixture(scope="module")
def weights_32000(tmp_path_factory):
    """Tiny weights with the LLaMA vocabulary (32000 rows)."""
    path = str(tmp_path_factory.mktemp("weights") / "tiny_32000.bin")
    save_state_dict_file(tencentpretrain.build_model(TINY, 32000).state_dict(), path)
    return path


def expect_error(argv, pattern, kind=UserError):  # each guard's own class; one base for all
    with pytest.raises(kind, match=pattern):
        run_in_process(argv)


def test_dataset_vocabulary_larger_than_model(tmp_path, weights_32000):
    argv = pretrain_argv(str(tmp_path / "m"), extra=["--pretrained_model_path", weights_32000])
    argv = replace(replace(argv, "--dataset_path", datasets()["chinese_lm"]),
                   "--spm_model_path", CHINESE_SPM)
    expect_error(argv, "has a vocabulary of 100000 tokens, the model only 32000")


def test_seq_length_above_max_seq_length(tmp_path, small_max_seq_config):
    argv = replace(pretrain_argv(str(tmp_path / "m")), "--config_path", small_max_seq_config)
    expect_error(argv, "has seq_length 64, above max_seq_length 32")


def test_data_processor_differs_from_dataset(tmp_path):
    argv = replace(pretrain_argv(str(tmp_path / "m")), "--data_processor", "alpaca")
    expect_error(argv, "--data_processor alpaca, but .* was made with --data_processor lm")


def test_prefix_lm_loss_without_prompt_lengths(tmp_path):
    argv = pretrain_argv(str(tmp_path / "m"), extra=["--prefix_lm_loss"])
    expect_error(argv, "--prefix_lm_loss: .* has no prompt lengths")


@pytest.mark.parametrize("option", ["--config_path", "--spm_model_path", "--pretrained_model_path",
                                    "--dataset_path", "--resume_from_checkpoint"])
def test_missing_file(tmp_path, option):
    argv = pretrain_argv(str(tmp_path / "m"))
    missing = str(tmp_path / "nothing_here")
    argv = replace(argv, option, missing) if option in argv else argv + [option, missing]
    expect_error(argv, f"{option} {missing}: no such")


def test_tokenizer_differs_from_dataset(tmp_path):
    argv = replace(pretrain_argv(str(tmp_path / "m")), "--spm_model_path", OTHER_SPM)
    expect_error(argv, "was made with another tokenizer than --spm_model_path")


def test_world_size_differs_from_launcher(tmp_path):
    expect_error(pretrain_argv(str(tmp_path / "m"), extra=["--world_size", "8"]),
                 "--world_size 8, but the launcher started 1 rank")


def test_deepspeed_config_contradictions(tmp_path):
    base = pretrain_argv(str(tmp_path / "m"), extra=["--deepspeed"])
    expect_error(base + ["--deepspeed_config", ZERO2, "--enable_zero3"],
                 "--enable_zero3 needs zero_optimization.stage 3")
    expect_error(base + ["--deepspeed_config", ZERO3], "uses ZeRO stage 3: add --enable_zero3")
    config = json.load(open(ZERO3))
    config["train_batch_size"] = 1000
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    expect_error(base + ["--deepspeed_config", str(path), "--enable_zero3"],
                 "train_batch_size 1000 != --batch_size 4 x --accumulation_steps 1 x 1 ranks")


def test_too_few_samples_for_the_ranks(tmp_path):
    # an lm dataset has hundreds of samples; one sample per rank is the floor
    from tencentpretrain.data import BatchIterator, TokenDataset
    with pytest.raises(DatasetError, match="cannot be split over"):
        BatchIterator(TokenDataset(datasets()["lm"]), 1, 7, rank=0, world_size=10 ** 6)


def test_non_finite_loss_stops_with_the_step(tmp_path):
    argv = replace(pretrain_argv(str(tmp_path / "m"), steps=5, save=5), "--learning_rate", "1e30")
    expect_error(argv, r"step \d: the loss is (nan|inf)")
    assert not os.path.exists(str(tmp_path / "m-5"))


def test_script_prints_one_line_and_exits_2(tmp_path):
    argv = replace(pretrain_argv(str(tmp_path / "m")), "--data_processor", "alpaca")
    result = run_script(argv)
    assert result.returncode == 2
    lines = [l for l in result.stderr.splitlines() if "get_accelerator" not in l]
    assert len(lines) == 1 and lines[0].startswith("error: --data_processor alpaca"), result.stderr
    assert "Traceback" not in result.stderr


def test_outputs_of_a_short_run(tmp_path):
    """A consolidated save is a plain state dict load_model reads; no temp file is left;
    TensorBoard gets its scalars."""
    run_in_process(pretrain_argv(str(tmp_path / "m"), steps=2, save=2,
                                 extra=["--tensorboard_dir", str(tmp_path / "tb")]))
    model = tencentpretrain.load_model(TINY, str(tmp_path / "m-2"))
    assert model.vocab_size == VOCAB_SIZE
    assert sorted(os.listdir(tmp_path)) == ["m", "m-2", "m.checkpoints", "tb"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tb"))
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]]))).all()
