"""The training loop: check everything, build, (resume,) step, report, save.

Every check that can fail on bad input runs before the first step, so a run
that starts also finishes (or stops on a non-finite loss, naming the step).
"""
import math
import os
import random

import numpy as np
import torch

from tencentpretrain.config import load_config
from tencentpretrain.data import PROCESSORS, BatchIterator, TokenDataset
from tencentpretrain.model_builder import build_model
from tencentpretrain.tokenizer import SpmTokenizer
from tencentpretrain.training import checkpointing as ckpt
from tencentpretrain.training.ds_config import read_config, reconcile
from tencentpretrain.training.engine import make_backend, precision_refusal
from tencentpretrain.training.errors import TrainingError
from tencentpretrain.training.loss import count_tokens, scaled_loss
from tencentpretrain.training.metrics import (Throughput, flops_per_token, full_numel,
                                              peak_flops)
from tencentpretrain.training.options import check_args
from tencentpretrain.training.reporting import Reporter
from tencentpretrain.training.scheduler import lr_multiplier


def launched_world_size():
    """What the launcher (deepspeed, torchrun) started, from its environment."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_rank0():
    return int(os.environ.get("RANK", "0")) == 0


def say(line):
    if is_rank0():
        print(line, flush=True)


def check_data(args, dataset, tokenizer, config, vocab_size):
    """The guards between the dataset and the tokenizer, model and options."""
    path = args.dataset_path
    if args.prefix_lm_loss and not dataset.has_prompt_lengths:
        raise TrainingError(f"--prefix_lm_loss: {path} has no prompt lengths (it is a "
                            f"{dataset.data_processor} dataset; make an alpaca one)")
    if dataset.data_processor != PROCESSORS[args.data_processor]:
        raise TrainingError(f"--data_processor {args.data_processor}, but {path} was made with "
                            f"--data_processor {dataset.data_processor}")
    if dataset.tokenizer_sha256 != tokenizer.sha256:
        raise TrainingError(f"{path} was made with another tokenizer than --spm_model_path "
                            f"{args.spm_model_path} (sha256 {dataset.tokenizer_sha256[:12]}... != "
                            f"{tokenizer.sha256[:12]}...)")
    if dataset.vocab_size > vocab_size:
        raise TrainingError(f"{path} has a vocabulary of {dataset.vocab_size} tokens, the model "
                            f"only {vocab_size}")
    if dataset.seq_length > config.max_seq_length:
        raise TrainingError(f"{path} has seq_length {dataset.seq_length}, above max_seq_length "
                            f"{config.max_seq_length} of {args.config_path}")


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(args):
    check_args(args)
    world_size = launched_world_size()
    if args.world_size is not None and args.world_size != world_size:
        raise TrainingError(f"--world_size {args.world_size}, but the launcher started "
                            f"{world_size} rank(s); fix --world_size or the launcher's "
                            "--num_gpus/--num_nodes/hostfile")
    ds_config = reconcile(args, read_config(args.deepspeed_config), world_size,
                          lambda wanted: precision_refusal(args, wanted), say)

    tokenizer = SpmTokenizer(args.spm_model_path)
    dataset = TokenDataset(args.dataset_path)
    config = load_config(args.config_path)
    weights, vocab_size = None, tokenizer.vocab_size
    if args.pretrained_model_path:
        weights, vocab_size = ckpt.open_pretrained(args.pretrained_model_path, config)
    check_data(args, dataset, tokenizer, config, vocab_size)

    backend = make_backend(args, ds_config)
    if args.resume_from_checkpoint:
        weights = None  # the checkpoint's weights replace them anyway
    checkpoint_layers = (args.deepspeed_checkpoint_layers_num
                         if args.deepspeed_checkpoint_activations else 0)
    model = setup_model(backend, config, vocab_size, args.seed, weights, checkpoint_layers,
                        lr_multiplier(args.scheduler, args.total_steps, args.warmup))

    batches = BatchIterator(dataset, args.batch_size, args.seed, backend.rank, backend.world_size,
                            prefix_lm_loss=args.prefix_lm_loss)
    start_step = resume(args, backend, batches) if args.resume_from_checkpoint else 0
    say(f"training {model.config.source}: {sum(map(full_numel, model.parameters())):,} "
        f"parameters, {backend.world_size} rank(s), {backend.precision}, batch {args.batch_size}"
        f" x {args.accumulation_steps} accumulation x {backend.world_size} ranks, steps "
        f"{start_step + 1}..{args.total_steps}")
    if backend.zero3:
        say(partition_summary(model))
    if dataset.packed:
        say(f"{args.dataset_path} is packed: every example attends, is positioned and is counted "
            f"as if alone")

    loop(args, backend, model, batches, start_step, dataset.seq_length)
    backend.close()


def setup_model(backend, config, vocab_size, seed, weights, checkpoint_layers, multiplier):
    """Build (partitioned under ZeRO-3), load ``weights`` or initialise, and hand the model
    to the backend; the seed makes the initialisation the same on every backend."""
    seed_everything(seed)
    with backend.model_context():
        model = build_model(config, vocab_size)
    if weights is not None:
        ckpt.load_weights(model, weights, backend.zero3, backend.rank)
    else:
        ckpt.init_weights(model, backend.zero3, backend.rank)
    if checkpoint_layers:
        model.encoder.enable_activation_checkpointing(checkpoint_layers, backend.checkpoint_fn())
    backend.prepare(model, multiplier)
    return model.train()


def partition_summary(model):
    """How much of the model this rank stores: evidence that ZeRO-3 partitioned it."""
    stored = sum(p.ds_tensor.numel() for p in model.parameters())
    full = sum(full_numel(p) for p in model.parameters())
    visible = sum(p.numel() for p in model.parameters())  # 0 outside GatheredParameters
    return (f"ZeRO-3: rank 0 stores {stored:,} of {full:,} parameter elements "
            f"({visible} materialised)")


def resume(args, backend, batches):
    directory = args.resume_from_checkpoint
    tag = ckpt.read_latest(directory)
    state = ckpt.load_trainer_state(directory, tag, backend.rank)
    if state["world_size"] != backend.world_size:
        raise TrainingError(f"--resume_from_checkpoint {directory}: saved by {state['world_size']} "
                            f"rank(s), resumed with {backend.world_size}; the data order is per "
                            "rank, resume with the same number")
    if state["step"] >= args.total_steps:
        raise TrainingError(f"--resume_from_checkpoint {directory}: already at step "
                            f"{state['step']}, --total_steps is {args.total_steps}")
    backend.load_checkpoint(directory, tag)
    try:
        batches.load_state_dict(state["data"])
    except ValueError as e:
        raise TrainingError(f"--resume_from_checkpoint {directory}: {e}") from None
    ckpt.set_rng_state(state["rng"])
    say(f"resumed from {os.path.join(directory, tag)} at step {state['step']}")
    return state["step"]


def train_step(backend, micro_batches):
    """One optimizer step over this rank's micro-batches (see loss.py for the scaling).

    Returns the global sum of token losses, the global counted and input token numbers,
    and the gradient norm."""
    counted, tokens = count_tokens(micro_batches, backend)
    local_loss = torch.zeros((), dtype=torch.float64)
    for batch in micro_batches:
        loss_sum, _ = backend.forward(batch)
        backend.backward(scaled_loss(loss_sum, counted, backend.loss_divisor))
        local_loss += loss_sum.detach().double().cpu()
    grad_norm = backend.step()
    step_loss = float(backend.all_reduce_sum(local_loss.reshape(1)).cpu())
    return step_loss, counted, tokens, grad_norm


def loop(args, backend, model, batches, start_step, seq_length):
    reporter = Reporter(backend.rank, args.total_steps, start_step, args.tensorboard_dir)
    throughput = Throughput(flops_per_token(model, seq_length), backend.world_size,
                            peak_flops(args.peak_tflops))
    window_loss, window_tokens = 0.0, 0
    try:
        for step in range(start_step + 1, args.total_steps + 1):
            micro_batches = [next(batches) for _ in range(args.accumulation_steps)]
            lr = backend.lr
            step_loss, counted, tokens, grad_norm = train_step(backend, micro_batches)
            if not math.isfinite(step_loss):
                raise TrainingError(f"step {step}: the loss is {step_loss / max(counted, 1)}; "
                                    "stopping (resume from the last checkpoint with a lower "
                                    "--learning_rate)")
            window_loss, window_tokens = window_loss + step_loss, window_tokens + counted
            throughput.add(tokens)
            reporter.advance()
            if step % args.report_steps == 0 or step == args.total_steps:
                tokens_per_s, mfu = throughput.report()
                reporter.report(step, window_loss / max(window_tokens, 1), lr, grad_norm,
                                tokens_per_s, mfu)
                window_loss, window_tokens = 0.0, 0
            if step % args.save_checkpoint_steps == 0 or step == args.total_steps:
                save(args, backend, model, batches, step, reporter)
    finally:
        reporter.close()


def save(args, backend, model, batches, step, reporter):
    """Consolidated weights, then the resumable checkpoint, then ``latest``."""
    path = ckpt.weights_path(args.output_model_path, step)
    ckpt.save_weights(model, path, backend.zero3, backend.rank)
    directory, tag = ckpt.checkpoints_dir(args.output_model_path), ckpt.tag_of(step)
    state = {"step": step, "world_size": backend.world_size, "data": batches.state_dict(),
             "rng": ckpt.rng_state()}
    ckpt.save_trainer_state(directory, tag, backend.rank, state)
    backend.save_checkpoint(directory, tag)
    backend.barrier()
    if backend.rank == 0:
        ckpt.write_latest(directory, tag)
    reporter.say(f"saved {path} and {os.path.join(directory, tag)}")
