"""The training loop: check everything, build, (resume,) step, report, save.

Every check that can fail on bad input runs before the first step, so a run
that starts also finishes (or stops on a non-finite loss, naming the step).
"""
import math
import os
import random

import numpy as np
import torch

from tencentpretrain.adapters import (adapter_files, base_fingerprint, base_record,
                                      check_adapter, other_base, read_adapter, save_adapter)
from tencentpretrain.config import load_config
from tencentpretrain.data import PROCESSORS, BatchIterator, Prefetcher, TokenDataset
from tencentpretrain.layers.lora import (adapter_names, inject_lora,
                                         keep_grad_through_checkpoints)
from tencentpretrain.model_builder import build_model
from tencentpretrain.models import layout
from tencentpretrain.tokenizer import load_tokenizer
from tencentpretrain.training import checkpointing as ckpt
from tencentpretrain.training.engine import make_backend
from tencentpretrain.training.errors import TrainingError
from tencentpretrain.training.logs import LOGGER, close_logging, setup_logging
from tencentpretrain.training.loss import count_tokens, scaled_loss
from tencentpretrain.training.metrics import (Throughput, flops_per_token, full_numel,
                                              peak_flops)
from tencentpretrain.training.options import check_args, lora_config
from tencentpretrain.training.reporting import Reporter
from tencentpretrain.training.scheduler import lr_multiplier, resume_schedule
from tencentpretrain.training.settings import Launch, resolve, single_rank_environment
from tencentpretrain.training.train_state import TrainState
from tencentpretrain.training.validation import Validator, best_weights_path


def say(line):
    LOGGER.info(line)  # rank 0 only (see logs.py)


def check_data(args, dataset, tokenizer, config, vocab_size):
    """The guards between a dataset (training or held-out) and the tokenizer, model and
    options."""
    path = dataset.path
    if args.prefix_lm_loss and not dataset.has_prompt_lengths:
        raise TrainingError(f"--prefix_lm_loss: {path} has no prompt lengths (it is a "
                            f"{dataset.data_processor} dataset; make an alpaca one)")
    if dataset.data_processor != PROCESSORS[args.data_processor]:
        raise TrainingError(f"--data_processor {args.data_processor}, but {path} was made with "
                            f"--data_processor {dataset.data_processor}")
    dataset.check_fits(tokenizer, vocab_size, config.max_seq_length, args.config_path)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(args):
    setup_logging(Launch.from_environment().rank, args.log_level, args.log_path,
                  args.log_file_level)
    try:
        _train(args)
    finally:
        close_logging()


def _train(args):
    check_args(args)
    if args.deepspeed and single_rank_environment():
        say("note: not started by a launcher (deepspeed, torchrun); running one rank")
    launch = Launch.from_environment(args.local_rank)
    if launch.rank == 0:
        for path in ckpt.remove_stale_temporaries(args.output_model_path):
            say(f"removed {path}, left by a save that was killed")
    if args.world_size is not None and args.world_size != launch.world_size:
        raise TrainingError(f"--world_size {args.world_size}, but the launcher started "
                            f"{launch.world_size} rank(s); fix --world_size or the launcher's "
                            "--num_gpus/--num_nodes/hostfile")
    # another rank count than the checkpoint's: DeepSpeed re-partitions its universal layout
    load_universal = bool(args.resume_from_checkpoint and args.deepspeed and
                          ckpt.saved_world_size(args.resume_from_checkpoint) != launch.world_size)
    settings = resolve(args, say, launch=launch, load_universal=load_universal)

    tokenizer = load_tokenizer(args.spm_model_path, args.tokenizer_path)
    dataset = TokenDataset(args.dataset_path)
    config = load_config(args.config_path)
    saved_run = None
    if args.resume_from_checkpoint:  # what the checkpoint holds, before anything is loaded
        saved_run = ckpt.saved_run(args.resume_from_checkpoint, launch.rank)
        if saved_run is None:
            say(f"note: {args.resume_from_checkpoint} was saved before checkpoints recorded "
                "their model config, LoRA settings, base and dataset; these are not checked")
        else:
            ckpt.check_resumed_model(args.resume_from_checkpoint, saved_run, args.config_path,
                                     config, args.use_lora)
    weights, vocab_size, base_fp = None, tokenizer.vocab_size, None
    if args.pretrained_model_path:
        weights, vocab_size = ckpt.open_pretrained(args.pretrained_model_path, config)
        base_fp = base_fingerprint(weights, config.tie_weights)
    check_data(args, dataset, tokenizer, config, vocab_size)
    validator = None
    if args.eval_dataset_path:  # the held-out set passes the same guards, before any work
        eval_dataset = TokenDataset(args.eval_dataset_path)
        check_data(args, eval_dataset, tokenizer, config, vocab_size)
        validator = Validator(args, eval_dataset, settings.batch_size)

    lora, adapter = open_lora(args, config, vocab_size, base_fp) if args.use_lora else (None, None)
    record = ckpt.run_record(args.config_path, config, vocab_size, lora,
                             args.pretrained_model_path, base_fp, args.seed, args.dataset_path,
                             dataset.meta)
    if saved_run is not None:
        ckpt.check_resumed_inputs(args.resume_from_checkpoint, saved_run, record,
                                  args.allow_changed_base, args.allow_changed_dataset, say)

    backend = make_backend(settings)
    if args.resume_from_checkpoint and lora is None:
        weights = None  # the checkpoint's weights replace them (a frozen base is not in it)
    checkpoint_layers = (args.deepspeed_checkpoint_layers_num
                         if args.deepspeed_checkpoint_activations else 0)
    model = setup_model(backend, config, vocab_size, args.seed, weights, checkpoint_layers,
                        lr_multiplier(args.scheduler, args.total_steps, args.warmup,
                                      args.lr_decay), lora, adapter, compile_layers=args.compile)

    batches = BatchIterator(dataset, settings.batch_size, args.seed, backend.rank, backend.world_size,
                            prefix_lm_loss=args.prefix_lm_loss)
    start_step = resume(args, backend, batches) if args.resume_from_checkpoint else 0
    say(f"training {model.config.source}: {parameter_summary(model)}, "
        f"{backend.world_size} rank(s) on {backend.device.type}, {backend.precision}, batch "
        f"{settings.batch_size} x {settings.accumulation_steps} accumulation x "
        f"{backend.world_size} ranks, steps "
        f"{start_step + 1}..{args.total_steps}")
    if backend.zero3:
        say(partition_summary(model))
    if dataset.packed:
        say(f"{args.dataset_path} is packed: every example attends, is positioned and is counted "
            f"as if alone")

    batches = Prefetcher(batches, pin_memory=backend.device.type == "cuda")
    try:
        loop(args, settings, backend, model, batches, start_step, dataset.seq_length, record,
             validator)
    finally:
        batches.close()
    backend.close()


def setup_model(backend, config, vocab_size, seed, weights, checkpoint_layers, multiplier,
                lora=None, adapter=None, compile_layers=False):
    """Build (partitioned under ZeRO-3), load ``weights`` or initialise, put on LoRA
    adapters (``lora``; loaded from ``adapter`` or new), and hand the model to the backend;
    the seed makes the initialisation the same on every backend.
    ``compile_layers``: torch.compile each transformer layer in place (parameter names and
    checkpoints unchanged); the layer is the unit that repeats, so it compiles once."""
    seed_everything(seed)
    with backend.model_context():
        model = build_model(config, vocab_size)
    if weights is not None:
        ckpt.load_weights(model, weights, backend.zero3, backend.rank)
    else:
        ckpt.init_weights(model, backend.zero3, backend.rank)
    if lora is not None:
        with backend.model_context():  # ZeRO-3: the new adapters are partitioned too
            inject_lora(model, lora)
        if adapter is not None:
            ckpt.load_weights(model, adapter, backend.zero3, backend.rank, names=set(adapter))
    if checkpoint_layers:
        layout.enable_activation_checkpointing(model, checkpoint_layers, backend.checkpoint_fn())
        if lora is not None:
            keep_grad_through_checkpoints(model)
    if compile_layers:
        for layer in layout.layers(model):
            layer.compile()
    backend.prepare(model, multiplier)
    return model.train()


def open_lora(args, config, vocab_size, base_fp=None):
    """The LoRA settings and the adapter to continue from (None: new adapters), checked
    against the model's shapes on the meta device before anything is allocated, and
    against the base it was trained on (``base_fp``: this run's base fingerprint)."""
    saved, adapter = None, None
    if args.lora_pretrained_model_path:
        path = args.lora_pretrained_model_path
        line = other_base(path, base_fp, f"--pretrained_model_path {args.pretrained_model_path}")
        if line and not args.allow_changed_base:
            raise TrainingError(f"--lora_pretrained_model_path: {line}; pass its base, or "
                                "--allow_changed_base to continue it on this one")
        if line:
            say(f"note: {line}; continuing it on this base (--allow_changed_base)")
        saved, adapter = read_adapter(path, config)
    lora = lora_config(args, saved)
    if adapter is not None:
        check_adapter(config, lora, adapter, args.lora_pretrained_model_path, vocab_size)
    else:  # a target the config lacks fails here
        inject_lora(build_model(config, vocab_size, device="meta"), lora)
    return lora, adapter


def parameter_summary(model):
    parameters = {id(p): p for p in model.parameters()}.values()  # tied weights once
    total = sum(map(full_numel, parameters))
    trainable = sum(full_numel(p) for p in parameters if p.requires_grad)
    if trainable == total:
        return f"{total:,} parameters"
    return f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)"


def partition_summary(model):
    """How much of the model this rank stores: evidence that ZeRO-3 partitioned it."""
    stored = sum(p.ds_tensor.numel() for p in model.parameters())
    full = sum(full_numel(p) for p in model.parameters())
    visible = sum(p.numel() for p in model.parameters())  # 0 outside GatheredParameters
    return (f"ZeRO-3: rank 0 stores {stored:,} of {full:,} parameter elements; whole "
            f"parameters exist only while a layer runs ({visible:,} elements held whole now)")


def resume(args, backend, batches):
    """Weights, optimizer, scheduler, data position and RNG of the latest save. On another
    number of ranks (DeepSpeed) the checkpoint is converted once to DeepSpeed's universal
    layout, which re-partitions weights and optimizer state; the data position is global."""
    directory = args.resume_from_checkpoint
    tag = ckpt.read_latest(directory)
    state = TrainState.load(directory, tag, backend.rank)
    if state.step >= args.total_steps:
        raise TrainingError(f"--resume_from_checkpoint {directory}: already at step "
                            f"{state.step}, --total_steps is {args.total_steps}")
    load_tag = tag
    if state.world_size != backend.world_size:
        if not args.deepspeed:
            raise TrainingError(f"--resume_from_checkpoint {directory}: saved by "
                                f"{state.world_size} ranks; resume it under --deepspeed "
                                "(`deepspeed --num_gpus 1 pretrain.py --deepspeed ...` for one)")
        if backend.rank == 0:
            ckpt.make_universal(directory, tag, say)
        backend.barrier()
        load_tag = ckpt.universal_tag(tag)
        say(f"resuming {state.world_size} rank(s) -> {backend.world_size}: weights and "
            f"optimizer state re-partitioned from {os.path.join(directory, load_tag)}")
    try:
        backend.load_checkpoint(directory, load_tag)
    except RuntimeError as e:
        if state.run is not None or "in loading state_dict" not in str(e):
            raise
        raise TrainingError(ckpt.explain_weights_mismatch(directory, e)) from None
    resume_schedule(backend.scheduler, args.learning_rate)
    try:
        state.restore(batches)
    except ValueError as e:
        raise TrainingError(f"--resume_from_checkpoint {directory}: {e}") from None
    if batches.position >= len(batches.dataset):  # a smaller dataset (--allow_changed_dataset)
        batches.epoch, batches.position = batches.epoch + 1, 0
    say(f"resumed from {os.path.join(directory, tag)} at step {state.step}")
    if state.schedule is not None:  # saves before the schedule was recorded have none
        note = schedule_change(state.schedule, schedule_options(args), state.step + 1)
        if note:
            say(note)
    return state.step


SCHEDULE_OPTIONS = ("learning_rate", "scheduler", "warmup", "lr_decay", "total_steps")


def schedule_options(args):
    """The options the learning rate of every step follows (saved with each checkpoint)."""
    return {name: getattr(args, name) for name in SCHEDULE_OPTIONS}


def schedule_change(saved, current, step):
    """A `note:` when the resumed run's schedule differs from the saved run's (the schedule
    is a function of the options, see scheduler.py), with the rate at the next step under
    each; None when they agree."""
    changed = [f"--{name} {saved[name]} -> {current[name]}" for name in SCHEDULE_OPTIONS
               if saved.get(name) != current[name]]
    if not changed:
        return None

    def rate(options):
        multiplier = lr_multiplier(options["scheduler"], options["total_steps"],
                                   options["warmup"], options["lr_decay"])
        return options["learning_rate"] * multiplier(step - 1)  # LambdaLR counts from 0

    return (f"note: the learning-rate schedule differs from the saved run's "
            f"({', '.join(changed)}): step {step} trains at lr {rate(current):.3e} instead of "
            f"{rate(saved):.3e}")


def train_step(backend, micro_batches):
    """One optimizer step over this rank's micro-batches (see loss.py for the scaling).

    Returns the global sum of token losses, the global counted and input token numbers,
    and the gradient norm (a float or a 0-dim tensor: read it only when reporting)."""
    counted, tokens = count_tokens(micro_batches, backend)
    local_loss = torch.zeros((), dtype=torch.float64, device=backend.device)
    for batch in micro_batches:
        loss_sum, _ = backend.forward(batch)
        backend.backward(scaled_loss(loss_sum, counted, backend.loss_divisor))
        local_loss += loss_sum.detach().double()  # stays on the device: no sync per micro-batch
    grad_norm = backend.step()
    step_loss = float(backend.all_reduce_sum(local_loss.reshape(1)).cpu())  # the one sync
    return step_loss, counted, tokens, grad_norm


def loop(args, settings, backend, model, batches, start_step, seq_length, record=None,
         validator=None):
    reporter = Reporter(backend.rank, args.total_steps, start_step, args.tensorboard_dir)
    throughput = Throughput(flops_per_token(model, seq_length), backend.world_size,
                            peak_flops(args.peak_tflops))
    window_loss, window_tokens = 0.0, 0
    try:
        for step in range(start_step + 1, args.total_steps + 1):
            micro_batches = [next(batches) for _ in range(settings.accumulation_steps)]
            lr = backend.lr
            step_loss, counted, tokens, grad_norm = train_step(backend, micro_batches)
            if not math.isfinite(step_loss):
                raise TrainingError(f"step {step}: the loss is {step_loss / max(counted, 1)}; "
                                    "stopping (resume from the last checkpoint with a lower "
                                    "--learning_rate)")
            window_loss, window_tokens = window_loss + step_loss, window_tokens + counted
            throughput.add(tokens)
            reporter.add_tokens(tokens)
            reporter.advance()
            # the first step too: a short run shows its start, a long one that it started
            if step % args.report_steps == 0 or step in (start_step + 1, args.total_steps):
                tokens_per_s, mfu = throughput.report()
                reporter.report(step, window_loss / max(window_tokens, 1), lr, float(grad_norm),
                                tokens_per_s, mfu)
                window_loss, window_tokens = 0.0, 0
            if validator is not None and validator.due(step):
                if validator.run(backend, model, step, reporter) and args.save_best:
                    write_weights(args, backend, model, best_weights_path(
                        args.output_model_path), record)
                    validator.saved_best(backend.rank)
            if step % args.save_checkpoint_steps == 0 or step == args.total_steps:
                save(args, backend, model, batches, step, reporter, record)
        reporter.summary(args.total_steps,
                         output_paths(args) + (validator.summary() if validator else []))
    finally:
        reporter.close()


def output_paths(args):
    """(what, where) of everything a run writes, for the end-of-run summary."""
    out = args.output_model_path
    if args.use_lora:
        weights, settings = adapter_files(out)
        final = ("final adapter", f"{weights} + {settings} (each save: {out}-STEP.safetensors)")
    else:
        final = ("final weights", f"{out} (each save: {out}-STEP)")
    kept = f", newest {args.save_total_limit} kept" if args.save_total_limit else ""
    paths = [final, ("checkpoints", f"{ckpt.checkpoints_dir(out)} (--resume_from_checkpoint{kept})")]
    if args.tensorboard_dir:
        paths.append(("TensorBoard", f"{args.tensorboard_dir} (tensorboard --logdir "
                                     f"{args.tensorboard_dir})"))
    if args.log_path:
        paths.append(("run log", args.log_path))
    return paths


def write_weights(args, backend, model, path, record=None):
    """The consolidated weights at ``path`` (every rank calls: ZeRO-3 gathers), or under
    --use_lora the adapter (and modules_to_save) only, the base being unchanged; returns what
    rank 0 wrote."""
    if args.use_lora:
        state = ckpt.consolidated_state_dict(model, backend.zero3, backend.rank,
                                             names=set(adapter_names(model)))
        base = record["base"] if record else {"path": None, "fingerprint": None}
        if backend.rank == 0:
            path = save_adapter(path, model.lora_config, state,
                                base_record(base["path"], base["fingerprint"]))
    else:
        ckpt.save_weights(model, path, backend.zero3, backend.rank)
    return path


def save(args, backend, model, batches, step, reporter, record=None):
    """Consolidated weights, then the resumable checkpoint, then ``latest``. ``record``:
    what the run was started from (``checkpointing.run_record``), checked on resume."""
    path = write_weights(args, backend, model, ckpt.weights_path(args.output_model_path, step),
                         record)
    directory, tag = ckpt.checkpoints_dir(args.output_model_path), ckpt.tag_of(step)
    TrainState.capture(step, backend.world_size, batches, schedule_options(args),
                       record).save(directory, tag, backend.rank)
    backend.save_checkpoint(directory, tag)
    backend.barrier()
    if backend.rank == 0:
        ckpt.write_latest(directory, tag)
        if step == args.total_steps:  # an adapter's final name is OUTPUT.safetensors + .json
            pairs = (zip(adapter_files(path), adapter_files(args.output_model_path))
                     if args.use_lora else [(path, args.output_model_path)])
            for source, target in pairs:
                ckpt.publish_final(source, target)
        if args.save_total_limit:
            ckpt.prune_saves(args.output_model_path, args.save_total_limit, step)
    backend.barrier()  # no rank goes on before the save is complete and pruned
    final = (" + ".join(adapter_files(args.output_model_path)) if args.use_lora
             else args.output_model_path)
    reporter.say(f"saved {path} and {os.path.join(directory, tag)}"
                 + (f"; final {'adapter' if args.use_lora else 'weights'} also at {final}"
                    if step == args.total_steps else ""))
