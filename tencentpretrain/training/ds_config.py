"""Reconcile the DeepSpeed config with the command line, once, before DeepSpeed sees it.

The command line wins for what pretrain.py owns (micro-batch size, accumulation,
learning rate), with one ``note:`` line per override; a config that contradicts it in a
way that cannot be reconciled (total batch size, ZeRO stage, scheduler) is refused.
"""
import json

from tencentpretrain.training.errors import TrainingError
from tencentpretrain.utils.files import read_json

# What the shipped configs use; the plain backend trains with the same optimizer.
DEFAULT_OPTIMIZER = {"type": "AdamW", "params": {"betas": [0.9, 0.95], "eps": 1e-8,
                                                 "weight_decay": 0.01}}
DEFAULT_GRADIENT_CLIPPING = 1.0


def read_config(path):
    if path is None:
        return {}
    return read_json(path, TrainingError, f"--deepspeed_config {path}", expect=dict)


def reconcile(args, config, world_size, refusal, say):
    """Fill ``args.batch_size``/``args.accumulation_steps`` and return the config dict to
    hand to the backend. ``refusal(precision)``: why bf16/fp16 cannot be had here, or None.
    ``say(line)`` prints on rank 0."""
    path = args.deepspeed_config
    config = json.loads(json.dumps(config))  # a private copy
    for arg, key, default in [("batch_size", "train_micro_batch_size_per_gpu", 32),
                              ("accumulation_steps", "gradient_accumulation_steps", 1)]:
        given, configured = getattr(args, arg), config.get(key)
        if given is None:
            given = configured if configured is not None else default
        elif configured is not None and configured != given:
            say(f"note: --{arg} {given} overrides {key} {configured} of {path}")
        setattr(args, arg, given)
        config[key] = given
    total = args.batch_size * args.accumulation_steps * world_size
    if "train_batch_size" in config and config["train_batch_size"] != total:
        raise TrainingError(
            f"{path}: train_batch_size {config['train_batch_size']} != --batch_size "
            f"{args.batch_size} x --accumulation_steps {args.accumulation_steps} x {world_size} "
            "ranks; remove train_batch_size or make them agree")
    config["train_batch_size"] = total

    stage = config.get("zero_optimization", {}).get("stage", 0)
    if args.enable_zero3 and stage != 3:
        raise TrainingError(f"--enable_zero3 needs zero_optimization.stage 3 in {path}, it has "
                            f"{stage}")
    if stage == 3 and not args.enable_zero3 and args.deepspeed:
        raise TrainingError(f"{path} uses ZeRO stage 3: add --enable_zero3 so the model is built "
                            "partitioned")
    if "scheduler" in config:
        raise TrainingError(f"{path} has a scheduler section; remove it, --scheduler/--warmup "
                            "set the schedule")

    optimizer = config.setdefault("optimizer", json.loads(json.dumps(DEFAULT_OPTIMIZER)))
    params = optimizer.setdefault("params", {})
    if "lr" in params and params["lr"] != args.learning_rate:
        say(f"note: --learning_rate {args.learning_rate} overrides optimizer lr {params['lr']} "
            f"of {path}")
    params["lr"] = args.learning_rate
    config.setdefault("gradient_clipping", DEFAULT_GRADIENT_CLIPPING)

    wanted = [name for name in ("bf16", "fp16") if config.get(name, {}).get("enabled")]
    reason = refusal(wanted[0]) if wanted else None
    if reason:
        say(f"warning: {path} asks for {wanted[0]}, but {reason}; training in fp32")
        for name in wanted:
            config[name]["enabled"] = False
    return config


def precision(config):
    for name in ("bf16", "fp16"):
        if config.get(name, {}).get("enabled"):
            return name
    return "fp32"
