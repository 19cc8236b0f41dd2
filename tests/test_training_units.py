"""The pieces of training, in-process: loss mask, loss normalisation, activation
checkpointing, schedules, and that the loss falls on a repeated batch."""
import pytest
import torch

import tencentpretrain
from tencentpretrain.data import BatchIterator, TokenDataset
from tencentpretrain.tokenizer import SpmTokenizer
from tencentpretrain.training.engine import TorchBackend
from tencentpretrain.training.loss import scaled_loss
from tencentpretrain.training.scheduler import lr_multiplier
from tests.conftest import one_process_settings
from tests.training_support import LLAMA_SPM, TINY, datasets


def alpaca_batch(batch_size=4, prefix_lm_loss=True):
    dataset = TokenDataset(datasets()["alpaca"])
    it = BatchIterator(dataset, batch_size, seed=7, prefix_lm_loss=prefix_lm_loss)
    return dataset, next(it)


def test_loss_mask_is_exactly_the_answer_span():
    dataset, batch = alpaca_batch()
    order = BatchIterator(dataset, 4, seed=7).order(0)[:4]
    tokenizer = SpmTokenizer(LLAMA_SPM)
    for row, index in enumerate(order):
        sample = dataset[int(index)]
        learned = batch["labels"][row][batch["loss_mask"][row]].tolist()
        # the labels learned are the sample after its prompt: the answer, then eos
        assert learned == sample.tokens[sample.prompt_length:].tolist()
        assert learned[-1] == tokenizer.eos_id or len(sample.tokens) == dataset.seq_length + 1
        assert sample.prompt_length > 1 and len(learned) > 0


def test_without_prefix_lm_loss_every_real_token_counts():
    _, batch = alpaca_batch(prefix_lm_loss=False)
    assert torch.equal(batch["loss_mask"], batch["seg"] > 0)


def test_global_batch_normalisation_matches_one_big_batch():
    """Micro-batches of different sizes, scaled by the global count, give the gradient
    of the mean over all counted tokens (what accumulation over ranks must give too)."""
    torch.manual_seed(0)
    model = tencentpretrain.build_model(TINY, 32000)
    _, batch = alpaca_batch(batch_size=4)
    halves = [{k: v[:1] for k, v in batch.items()}, {k: v[1:] for k, v in batch.items()}]
    total = int(batch["loss_mask"].sum())
    for divisor in (1, 4):  # one process; DeepSpeed with A x W = 4 (it divides by 4 itself)
        model.zero_grad()
        for half in halves:
            loss_sum, _ = model(**half)
            (scaled_loss(loss_sum, total, divisor) / divisor).backward()
        accumulated = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        loss_sum, count = model(**batch)
        (loss_sum / count).backward()
        for a, p in zip(accumulated, model.parameters()):
            torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    _, batch = alpaca_batch()
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = tencentpretrain.build_model(TINY, 32000).train()
        model.init_weights()
        if checkpointing:
            model.encoder.enable_activation_checkpointing(layers_per_checkpoint=2)
        loss_sum, count = model(**batch)
        (loss_sum / count).backward()
        results.append((loss_sum.detach(), [p.grad for p in model.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_loss_falls_when_one_batch_is_repeated():
    torch.manual_seed(0)
    model = tencentpretrain.build_model(TINY, 32000)
    model.init_weights()
    backend = TorchBackend(one_process_settings(learning_rate=3e-3))  # the shipped defaults
    backend.prepare(model.train(), lr_multiplier("constant_with_warmup", 30, 0.0))
    _, batch = alpaca_batch()
    losses = []
    for _ in range(30):
        loss_sum, count = backend.forward(batch)
        backend.backward(scaled_loss(loss_sum, int(count), backend.loss_divisor))
        backend.step()
        losses.append(loss_sum.item() / int(count))
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("kind,expected", [
    ("linear", [0.5, 1.0, 0.75, 0.5, 0.25, 0.0]),
    ("cosine", [0.5, 1.0, 0.8535534, 0.5, 0.1464466, 0.0]),
    ("constant_with_warmup", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ("constant", [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),  # TencentPretrain's: no warm-up
    ("polynomial", [0.5, 1.0, 0.75 ** 0.5, 0.5 ** 0.5, 0.25 ** 0.5, 0.0]),  # power 0.5
])
def test_schedules(kind, expected):
    multiplier = lr_multiplier(kind, total_steps=10, warmup=0.2)  # 2 warm-up steps
    assert [multiplier(s) for s in (0, 1, 4, 6, 8, 10)] == pytest.approx(expected, abs=1e-6)


def test_every_schedule_the_help_lists_is_accepted_and_lr_decay_is_the_power():
    from tencentpretrain.training import build_parser
    from tests.training_support import pretrain_argv
    parser = build_parser()
    for kind in ("linear", "cosine", "polynomial", "constant", "constant_with_warmup"):
        assert parser.parse_args(pretrain_argv("m", extra=["--scheduler", kind])).scheduler == kind
    args = parser.parse_args(pretrain_argv("m", extra=["--scheduler", "polynomial",
                                                       "--lr_decay", "2"]))
    multiplier = lr_multiplier(args.scheduler, 10, 0.2, args.lr_decay)
    assert multiplier(6) == pytest.approx(0.5 ** 2)
    with pytest.raises(SystemExit):  # a schedule name is pointed at --scheduler
        parser.parse_args(pretrain_argv("m", extra=["--lr_decay", "cosine"]))


def test_weight_decay_shrinks_matrices_never_norms():
    """One AdamW step with weight decay 100 at lr 1e-3: every matrix shrinks by about
    lr x wd = 10%, every norm gain moves only by the Adam update (<= lr)."""
    torch.manual_seed(0)
    model = tencentpretrain.build_model(TINY, 32000)
    model.init_weights()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    backend = TorchBackend(one_process_settings({"optimizer": {"type": "AdamW", "params": {
        "lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 100.0}}}))
    backend.prepare(model.train(), lr_multiplier("constant", 1, 0.0))
    _, batch = alpaca_batch()
    loss_sum, count = backend.forward(batch)
    backend.backward(scaled_loss(loss_sum, int(count), backend.loss_divisor))
    backend.step()
    norms = [name for name in before if "layer_norm" in name]
    assert len(norms) == 2 * 2 + 1
    for name, p in model.named_parameters():
        change = (p.detach() - before[name]).abs().max().item()
        if name in norms:
            assert change <= 1e-3 + 1e-7, name
        else:
            ratio = (p.detach().norm() / before[name].norm()).item()
            assert 0.88 < ratio < 0.92, (name, ratio)


def test_decay_groups_use_the_full_shapes_under_zero3():
    """A ZeRO-3 parameter is a flat partition here; its full shape (ds_shape) decides."""
    from tencentpretrain.training.engine import optimizer_parameters
    model = torch.nn.Module()
    model.matrix = torch.nn.Parameter(torch.zeros(6))  # a partition of a [4, 3] matrix
    model.matrix.ds_shape = torch.Size([4, 3])
    model.gain = torch.nn.Parameter(torch.ones(3))
    model.frozen = torch.nn.Parameter(torch.zeros(2, 2), requires_grad=False)
    groups = optimizer_parameters(model, 0.1)
    assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(1, 0.1), (1, 0.0)]
    assert groups[0]["params"][0] is model.matrix and groups[1]["params"][0] is model.gain


def test_mfu_flops_equal_a_hand_count_for_7b_and_its_lora():
    """7B at seq 2048: per layer 4 x 4096^2 (attention) + 3 x 4096 x 11008 (gated FFN), 32
    layers, plus the 32000 x 4096 output layer; the embedding lookup, norms are not matmuls."""
    import os
    from tencentpretrain.layers.lora import LoraConfig, inject_lora
    from tencentpretrain.training.metrics import flops_per_token
    from tests.conftest import ROOT
    model = tencentpretrain.build_model(os.path.join(ROOT, "models", "llama", "7b_config.json"),
                                        32000, device="meta")
    matrices = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008) + 32000 * 4096
    attention = 12 * 32 * 4096 * 2048
    assert matrices == 6_607_077_376
    assert flops_per_token(model, 2048) == 6 * matrices + attention == 42_863_689_728
    inject_lora(model, LoraConfig(r=8))  # frozen base: no weight gradients, 4 per parameter
    assert flops_per_token(model, 2048) == 4 * matrices + 6 * 19_988_480 + attention


def test_settings_are_resolved_once_and_read_only():
    """The launcher, the DeepSpeed config and the command line meet once; nothing is written
    back into args, and what backends get are copies."""
    import argparse
    import dataclasses
    from tencentpretrain.training.engine import Backend, DeepSpeedBackend
    from tencentpretrain.training.settings import Launch, resolve
    args = argparse.Namespace(deepspeed=False, enable_zero3=False, deepspeed_config="ds.json",
                              batch_size=None, accumulation_steps=None, learning_rate=2e-4)
    notes = []
    settings = resolve(args, notes.append, launch=Launch(world_size=4), ds_config={
        "train_micro_batch_size_per_gpu": 6, "gradient_accumulation_steps": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}})
    assert (settings.batch_size, settings.accumulation_steps) == (6, 2)
    assert settings.batch_size * settings.accumulation_steps * settings.launch.world_size == 48
    assert args.batch_size is None and args.accumulation_steps is None
    assert notes == ["note: --learning_rate 0.0002 overrides optimizer lr 0.001 of ds.json"]
    settings.ds_config["optimizer"]["params"]["lr"] = 1.0
    settings.optimizer["params"]["lr"] = 1.0
    assert settings.ds_config["optimizer"]["params"]["lr"] == 2e-4
    assert settings.ds_config["train_batch_size"] == 48
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.batch_size = 1
    # one interface, no behaviour inherited from the other backend
    assert issubclass(TorchBackend, Backend) and issubclass(DeepSpeedBackend, Backend)
    assert not issubclass(DeepSpeedBackend, TorchBackend)
    assert not Backend.__abstractmethods__ - set(vars(DeepSpeedBackend))
    assert not Backend.__abstractmethods__ - set(vars(TorchBackend))
