"""One real 2-rank DeepSpeed ZeRO-3 ``--use_lora`` run of pretrain.py: GQA config, alpaca
instruction tuning with --prefix_lm_loss, DeepSpeed's activation checkpointing, the output
layer as a module to save, from a pretrained base. Checked against the one-process backend
on the same global batch, and through DeepSpeed's own zero_to_fp32 consolidation of the
resumable checkpoint (which holds the frozen base too)."""
import os
import re

import pytest
import torch

import tencentpretrain
from tencentpretrain.evaluation import evaluate_dataset
from tencentpretrain.tokenizer import SpmTokenizer
from tencentpretrain.utils.weights import load_state_dict_file, save_state_dict_file
from tests.test_pretrain_deepspeed import DEEPSPEED, assert_same_run, launch, one_process
from tests.training_support import LLAMA_SPM, datasets, logged_losses, pretrain_argv

GQA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models",
                   "llama", "tiny_gqa_config.json")
OUTPUT = "target.lm.output_layer.weight"


def lora_argv(output, base, batch):
    return pretrain_argv(output, dataset="alpaca", steps=4, save=2, batch=batch, extra=[
        "--config_path", GQA, "--pretrained_model_path", base, "--prefix_lm_loss",
        "--learning_rate", "1e-2", "--use_lora", "--lora_r", "8", "--lora_alpha", "16",
        "--lora_modules_to_save", "output"])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.manual_seed(3)
    model = tencentpretrain.build_model(GQA, 32000)
    model.init_weights()
    path = str(tmp_path_factory.mktemp("lora_base") / "base.bin")
    save_state_dict_file(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory, base):
    out = str(tmp_path_factory.mktemp("zero3_lora") / "m")
    log = launch(lora_argv(out, base, batch=2) + DEEPSPEED + [
        "--deepspeed_checkpoint_activations", "--deepspeed_checkpoint_layers_num", "1"])
    return out, log


def test_zero3_lora_prints_trainable_parameters_and_partitions(zero3_run):
    _, log = zero3_run
    # r 8 on 7 targets of 2 layers (k/v of size 16) + the 32000 x 64 output layer
    assert "2,063,872 trainable of 4,181,824 parameters (49.35%)" in log
    stored, full = re.search(r"rank 0 stores ([\d,]+) of ([\d,]+) parameter", log).groups()
    assert int(stored.replace(",", "")) <= int(full.replace(",", "")) // 2 + 64


def test_zero3_lora_trains_like_one_process(zero3_run, base, tmp_path, capsys):
    out, log = zero3_run
    plain = one_process(lora_argv(str(tmp_path / "m"), base, batch=4), capsys)
    assert_same_run(logged_losses(log), plain, out + "-4.safetensors",
                    str(tmp_path / "m-4.safetensors"))


def test_zero3_lora_changes_only_adapters_and_modules_to_save(zero3_run, base):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    out, _ = zero3_run
    full = get_fp32_state_dict_from_zero_checkpoint(out + ".checkpoints", "global_step4")
    base_state = load_state_dict_file(base)
    adapter = load_state_dict_file(out + "-4.safetensors")
    assert set(full) == set(base_state) | set(adapter)
    assert len(adapter) == 2 * 7 * 2 + 1 and OUTPUT in adapter
    for name, tensor in base_state.items():
        if name != OUTPUT:
            assert torch.equal(full[name], tensor), name  # the frozen base, bitwise
    assert not torch.equal(full[OUTPUT], base_state[OUTPUT])
    assert all(torch.equal(full[name], t) for name, t in adapter.items())  # saved = trained
    earlier = load_state_dict_file(out + "-2.safetensors")
    assert all(not torch.equal(earlier[name], t) for name, t in adapter.items())


def test_zero3_lora_lowers_the_loss(zero3_run, base):
    out, _ = zero3_run
    tokenizer = SpmTokenizer(LLAMA_SPM)
    before = evaluate_dataset(tencentpretrain.load_model(GQA, base), tokenizer,
                              datasets()["alpaca"], prefix_lm_loss=True)
    tuned = tencentpretrain.load_model(GQA, base, lora_model_path=out + "-4.safetensors")
    after = evaluate_dataset(tuned, tokenizer, datasets()["alpaca"], prefix_lm_loss=True)
    assert after["tokens"] == before["tokens"] > 0
    assert after["loss"] < before["loss"] - 0.5, (before, after)
