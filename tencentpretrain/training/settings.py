"""What a run needs from outside the model config, resolved once and then only read.

Three sources meet here: the launcher's environment (``Launch``), the DeepSpeed
config file and the command line. ``resolve`` reconciles them before DeepSpeed sees
anything: the command line wins for what pretrain.py owns (micro-batch size,
accumulation, learning rate), with one ``note:`` line per override; a config that
contradicts it in a way that cannot be reconciled (total batch size, ZeRO stage,
scheduler) is refused. The trainer and both backends read the resulting
``RunSettings``; nothing writes back into ``args``.
"""
import copy
import os
import socket
from dataclasses import dataclass

import torch

from tencentpretrain.training.errors import TrainingError
from tencentpretrain.utils.files import read_json

# What the shipped configs use; the plain backend trains with the same optimizer.
DEFAULT_OPTIMIZER = {"type": "AdamW", "params": {"betas": [0.9, 0.95], "eps": 1e-8,
                                                 "weight_decay": 0.01}}
DEFAULT_GRADIENT_CLIPPING = 1.0
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class Launch:
    """This process's place among the ranks a launcher (deepspeed, torchrun) started."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environment(cls, local_rank_arg=-1):
        env = os.environ
        return cls(rank=int(env.get("RANK", "0")),
                   local_rank=int(env.get("LOCAL_RANK", max(local_rank_arg, 0))),
                   world_size=int(env.get("WORLD_SIZE", "1")))


def single_rank_environment():
    """``python3 pretrain.py --deepspeed`` without a launcher: set the rendezvous variables
    ``torchrun --nproc_per_node 1`` would set, so DeepSpeed runs one rank instead of
    probing for MPI. Returns whether it had to."""
    if any(name in os.environ for name in ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE")):
        return False
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return True


@dataclass(frozen=True)
class RunSettings:
    deepspeed: bool
    zero3: bool
    launch: Launch
    batch_size: int  # micro-batch per rank
    accumulation_steps: int
    precision: str  # "fp32", "bf16" or "fp16": what the backend really trains in
    deepspeed_config_path: str
    _ds_config: dict  # reconciled; handed out as copies only

    @property
    def ds_config(self):
        """A private copy of the reconciled DeepSpeed config (DeepSpeed may edit what it gets)."""
        return copy.deepcopy(self._ds_config)

    @property
    def optimizer(self):
        return copy.deepcopy(self._ds_config["optimizer"])

    @property
    def weight_decay(self):
        """Of the matrices; norm gains and biases get none (engine.optimizer_parameters)."""
        return self._ds_config["optimizer"]["params"].get(
            "weight_decay", DEFAULT_OPTIMIZER["params"]["weight_decay"])

    @property
    def gradient_clipping(self):
        return self._ds_config.get("gradient_clipping", 0.0)


def read_config(path):
    if path is None:
        return {}
    return read_json(path, TrainingError, f"--deepspeed_config {path}", expect=dict)


def resolve(args, say=lambda line: None, ds_config=None, launch=None, load_universal=False):
    """RunSettings from ``args`` (deepspeed, deepspeed_config, enable_zero3, batch_size,
    accumulation_steps, learning_rate), the DeepSpeed config (read from
    ``args.deepspeed_config`` unless given as a dict) and the launcher's environment.
    ``load_universal``: resuming on another number of ranks (DeepSpeed re-partitions).
    ``say(line)`` prints on rank 0."""
    path = getattr(args, "deepspeed_config", None)
    launch = launch or Launch.from_environment(getattr(args, "local_rank", -1))
    config = copy.deepcopy(read_config(path) if ds_config is None else ds_config)
    sizes = {}
    for arg, key, default in [("batch_size", "train_micro_batch_size_per_gpu", DEFAULT_BATCH_SIZE),
                              ("accumulation_steps", "gradient_accumulation_steps", 1)]:
        given, configured = getattr(args, arg, None), config.get(key)
        if given is None:
            given = configured if configured is not None else default
        elif configured is not None and configured != given:
            say(f"note: --{arg} {given} overrides {key} {configured} of {path}")
        sizes[arg] = config[key] = given
    total = sizes["batch_size"] * sizes["accumulation_steps"] * launch.world_size
    if "train_batch_size" in config and config["train_batch_size"] != total:
        raise TrainingError(
            f"{path}: train_batch_size {config['train_batch_size']} != --batch_size "
            f"{sizes['batch_size']} x --accumulation_steps {sizes['accumulation_steps']} x "
            f"{launch.world_size} ranks; remove train_batch_size or make them agree")
    config["train_batch_size"] = total

    deepspeed, zero3 = bool(args.deepspeed), bool(args.enable_zero3)
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if zero3 and stage != 3:
        raise TrainingError(f"--enable_zero3 needs zero_optimization.stage 3 in {path}, it has "
                            f"{stage}")
    if stage == 3 and not zero3 and deepspeed:
        raise TrainingError(f"{path} uses ZeRO stage 3: add --enable_zero3 so the model is built "
                            "partitioned")
    if "scheduler" in config:
        raise TrainingError(f"{path} has a scheduler section; remove it, --scheduler/--warmup "
                            "set the schedule")

    optimizer = config.setdefault("optimizer", copy.deepcopy(DEFAULT_OPTIMIZER))
    params = optimizer.setdefault("params", {})
    if "lr" in params and params["lr"] != args.learning_rate:
        say(f"note: --learning_rate {args.learning_rate} overrides optimizer lr {params['lr']} "
            f"of {path}")
    params["lr"] = args.learning_rate
    config.setdefault("gradient_clipping", DEFAULT_GRADIENT_CLIPPING)

    wanted = [name for name in ("bf16", "fp16") if config.get(name, {}).get("enabled")]
    reason = precision_refusal(deepspeed, wanted[0]) if wanted else None
    if reason:
        say(f"warning: {path} asks for {wanted[0]}, but {reason}; training in fp32")
        for name in wanted:
            config[name]["enabled"] = False
    if deepspeed and _deepspeed_device() == "cuda":
        _fuse_torch_adam(config)
    if load_universal:
        config.setdefault("checkpoint", {})["load_universal"] = True
    return RunSettings(deepspeed=deepspeed, zero3=zero3, launch=launch,
                       batch_size=sizes["batch_size"],
                       accumulation_steps=sizes["accumulation_steps"],
                       precision=_precision(config), deepspeed_config_path=path,
                       _ds_config=config)


def _precision(config):
    for name in ("bf16", "fp16"):
        if config.get(name, {}).get("enabled"):
            return name
    return "fp32"


def _deepspeed_device():
    from deepspeed.accelerator import get_accelerator
    return get_accelerator().device_name()


def precision_refusal(deepspeed, wanted):
    """Why the ``wanted`` precision (bf16/fp16) from the DeepSpeed config cannot be had
    here, or None. The one-process backend does bf16 autocast where the device has bf16
    arithmetic; DeepSpeed without a GPU (its CPU accelerator) trains in fp32."""
    if deepspeed:
        if _deepspeed_device() == "cpu":
            return "this machine has no GPU (DeepSpeed runs on its CPU accelerator)"
        return None
    if wanted == "fp16":
        return "the one-process backend has no fp16 loss scaling"
    if torch.cuda.is_available():
        return None if torch.cuda.is_bf16_supported() else "this GPU has no bf16"
    return None if _cpu_has_bf16() else "this CPU has no bf16 instructions"


def _cpu_has_bf16():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return "avx512_bf16" in flags.split() or "amx_bf16" in flags.split()


def _fuse_torch_adam(config):
    """With ``torch_adam`` DeepSpeed builds torch's AdamW from the config's params; on GPU
    ask for its fused kernel (without ``torch_adam`` DeepSpeed uses its own FusedAdam)."""
    optimizer = config.get("optimizer", {})
    params = optimizer.get("params", {})
    if (optimizer.get("type", "").lower() in ("adam", "adamw") and params.get("torch_adam")
            and "fused" not in params and "foreach" not in params):
        params["fused"] = True
