"""Two backends behind one small interface (``Backend``), so the trainer never asks
which it has.

    backend = make_backend(settings)             # processes, ranks, device
    with backend.model_context(): model = ...    # ZeRO-3: built partitioned
    backend.prepare(model, lr_multiplier)        # optimizer, scheduler, wrapping
    loss_sum, count = backend.forward(batch)
    backend.backward(loss)                       # once per micro-batch
    grad_norm = backend.step()                   # once per optimizer step
    backend.save_checkpoint(dir, tag) / backend.load_checkpoint(dir, tag)

``TorchBackend`` is one process of plain PyTorch (debugging, benchmarks);
``DeepSpeedBackend`` hands processes, partitioning, precision and checkpoint
layout to DeepSpeed. Both scale gradients the same way (``loss_divisor``). Neither
inherits behaviour from the other; both read the run's resolved ``RunSettings``.
"""
import abc
import atexit
import contextlib
import io
import os
import pickle
import warnings

import torch
import torch.distributed as dist

from tencentpretrain.data.batching import batch_to
from tencentpretrain.training.errors import TrainingError
from tencentpretrain.training.scheduler import build_scheduler
from tencentpretrain.utils.files import atomic_path
from tencentpretrain.utils.weights import load_state_dict_file, save_state_dict_file


def optimizer_parameters(model, weight_decay):
    """The parameter groups of either backend's optimizer: only trainable parameters (LoRA
    freezes the base, which then gets neither gradients nor optimizer state), and weight
    decay only on matrices (2+ dimensions), never on norm gains or biases, as in
    TencentPretrain's no_decay list, nanoGPT and LLaMA's recipe. Shapes are the full ones
    (``ds_shape``) under ZeRO-3, where a parameter here is a flat partition."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    matrices = [p for p in trainable if len(getattr(p, "ds_shape", p.shape)) >= 2]
    vectors = [p for p in trainable if len(getattr(p, "ds_shape", p.shape)) < 2]
    groups = [{"params": matrices, "weight_decay": weight_decay},
              {"params": vectors, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


class Backend(abc.ABC):
    """What the trainer calls; attributes every backend sets: ``rank``, ``world_size``,
    ``zero3``, ``device``, ``precision``, ``loss_divisor`` (what the backend divides each
    micro-batch loss by before backward; see loss.py)."""

    @abc.abstractmethod
    def model_context(self):
        """Context in which the model is built (ZeRO-3: partitioned as it is built)."""

    @abc.abstractmethod
    def checkpoint_fn(self):
        """The activation-checkpoint function for the encoder, or None for torch's."""

    @abc.abstractmethod
    def prepare(self, model, lr_multiplier):
        """Optimizer, scheduler and any wrapping of ``model``."""

    @abc.abstractmethod
    def forward(self, batch):
        """(loss_sum, counted tokens) of one micro-batch."""

    @abc.abstractmethod
    def backward(self, loss):
        """Once per micro-batch."""

    @abc.abstractmethod
    def step(self):
        """Once per optimizer step; returns the gradient norm (float or 0-dim tensor)."""

    @property
    @abc.abstractmethod
    def lr(self):
        """The learning rate the next step uses."""

    @abc.abstractmethod
    def all_reduce_sum(self, tensor):
        """Sum over ranks."""

    @abc.abstractmethod
    def barrier(self):
        """Wait for every rank."""

    @abc.abstractmethod
    def close(self):
        """Leave the process group, if any."""

    @abc.abstractmethod
    def save_checkpoint(self, directory, tag):
        """Weights, optimizer and scheduler in this backend's layout."""

    @abc.abstractmethod
    def load_checkpoint(self, directory, tag):
        """The inverse of save_checkpoint."""


class TorchBackend(Backend):
    """One process, torch.optim.AdamW with the DeepSpeed config's settings; fp32 weights,
    bf16 autocast when the config asks for bf16 (and the device has it)."""
    rank, world_size, zero3 = 0, 1, False
    loss_divisor = 1  # loss.backward() applies the gradient as is

    def __init__(self, settings):
        self.settings = settings
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = settings.precision
        self.model = self.optimizer = self.scheduler = None

    def checkpoint_fn(self):
        return None  # the encoder's default: torch's non-reentrant checkpoint

    def close(self):
        pass

    def model_context(self):
        return contextlib.nullcontext()

    def prepare(self, model, lr_multiplier):
        optimizer = self.settings.optimizer
        if optimizer.get("type", "").lower() not in ("adam", "adamw"):
            raise TrainingError(f"the one-process backend trains with AdamW, not "
                                f"{optimizer.get('type')!r}; run under --deepspeed")
        params = {k: v for k, v in optimizer["params"].items() if k in ("lr", "betas", "eps")}
        self.model = model.to(self.device)
        self.optimizer = torch.optim.AdamW(
            optimizer_parameters(model, self.settings.weight_decay), **params,
            **adamw_kernel(self.device))
        self.scheduler = build_scheduler(self.optimizer, lr_multiplier)
        self.clip = self.settings.gradient_clipping

    def forward(self, batch):
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.precision == "bf16"):
            return self.model(**batch_to(batch, self.device))

    def backward(self, loss):
        loss.backward()

    def step(self):
        """Returns the gradient norm as a tensor: reading it would wait for the device."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.clip if self.clip > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    @property
    def lr(self):
        return self.optimizer.param_groups[0]["lr"]  # also right after resume_schedule

    def all_reduce_sum(self, tensor):
        return tensor

    def barrier(self):
        pass

    def save_checkpoint(self, directory, tag):
        folder = os.path.join(directory, tag)
        save_state_dict_file(self.model.state_dict(), os.path.join(folder, "model.bin"))
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        with atomic_path(os.path.join(folder, "training_states.pt")) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self, directory, tag):
        folder = os.path.join(directory, tag)
        if not os.path.isfile(os.path.join(folder, "training_states.pt")):
            raise TrainingError(f"--resume_from_checkpoint {directory}: {folder} is not a "
                                "one-process checkpoint (saved under --deepspeed? resume there)")
        self.model.load_state_dict(load_state_dict_file(os.path.join(folder, "model.bin")))
        state = load_state_dict_file(os.path.join(folder, "training_states.pt"), tensors_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def release_shm_allreduce_buffer(rank):
    """DeepSpeed's CPU backend maps a 64 MiB segment in RAM-backed /dev/shm per rank and never
    unlinks it, so every CPU run would leave ranks x 64 MiB behind until the machine runs out
    of memory. Run at exit (success or error): the other ranks opened it during
    init_distributed, and their mappings outlive the name."""
    name = (f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR')}"
            f"_{os.environ.get('MASTER_PORT')}_{rank}")
    if os.path.exists(name):
        os.unlink(name)


class DeepSpeedBackend(Backend):
    """DeepSpeed's engine, with the config ``settings.resolve`` reconciled."""

    def __init__(self, settings):
        import deepspeed
        from deepspeed.accelerator import get_accelerator
        # DeepSpeed still calls torch.distributed functions torch has deprecated (not ours to fix)
        warnings.filterwarnings("ignore", message=r".*is deprecated\. Please use .*_single",
                                category=FutureWarning)
        with contextlib.redirect_stdout(io.StringIO()):  # its CPU backend prints a build line
            deepspeed.init_distributed()                  # per rank (its logger is unaffected)
        atexit.register(release_shm_allreduce_buffer, dist.get_rank())
        self.deepspeed = deepspeed
        self.settings = settings
        self.ds_config = settings.ds_config
        self.zero3 = settings.zero3
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        accelerator = get_accelerator()
        self.device = torch.device("cpu")
        if accelerator.device_name() != "cpu":
            accelerator.set_device(settings.launch.local_rank)
            self.device = torch.device(accelerator.device_name(settings.launch.local_rank))
        self.precision = settings.precision
        # DeepSpeed divides each micro-batch loss by the accumulation steps and averages
        # gradients over ranks; the trainer multiplies this back (see loss.py).
        self.loss_divisor = settings.accumulation_steps * self.world_size
        self.model = self.optimizer = self.scheduler = self.engine = None

    def model_context(self):
        if not self.zero3:
            return contextlib.nullcontext()
        return self.deepspeed.zero.Init(config_dict_or_path=self.ds_config)

    def prepare(self, model, lr_multiplier):
        self.model = model
        try:
            self.engine, self.optimizer, _, self.scheduler = self.deepspeed.initialize(
                model=model, config=self.ds_config, model_parameters=optimizer_parameters(
                    model, self.settings.weight_decay),
                lr_scheduler=lambda optimizer: build_scheduler(optimizer, lr_multiplier))
        except (ValueError, TypeError, AssertionError) as e:  # config DeepSpeed refuses
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrainingError(f"DeepSpeed refused --deepspeed_config "
                                f"{self.settings.deepspeed_config_path}: {first}") from None

    def checkpoint_fn(self):
        """DeepSpeed's (reentrant) activation checkpoint, configured without partitioning."""
        self.deepspeed.checkpointing.configure(None, partition_activations=False,
                                               contiguous_checkpointing=False,
                                               checkpoint_in_cpu=False)
        return self.deepspeed.checkpointing.checkpoint

    def forward(self, batch):
        return self.engine(**batch_to(batch, self.device))

    def backward(self, loss):
        self.engine.backward(loss)
        self.engine.step()  # DeepSpeed steps the optimizer only at the accumulation boundary

    def step(self):
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    @property
    def lr(self):
        return self.engine.get_lr()[0]

    def all_reduce_sum(self, tensor):
        tensor = tensor.to(self.device)
        dist.all_reduce(tensor)
        return tensor

    def barrier(self):
        dist.barrier()

    def close(self):
        dist.barrier()
        dist.destroy_process_group()

    def save_checkpoint(self, directory, tag):
        self.engine.save_checkpoint(directory, tag, save_latest=False)

    def load_checkpoint(self, directory, tag):
        # DeepSpeed's universal-checkpoint loader (ZeRO-3, 0.19) copies the first parameter
        # group's hyperparameters onto every group, which would decay the norm gains: the
        # weight decay of each group is ours (optimizer_parameters), put back after loading
        decays = [group.get("weight_decay") for group in self.optimizer.param_groups]
        try:
            path, _ = self.engine.load_checkpoint(directory, tag, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrainingError(f"--resume_from_checkpoint {directory}: {tag} is not a loadable "
                                f"checkpoint ({first})") from None
        for group, decay in zip(self.optimizer.param_groups, decays):
            group["weight_decay"] = decay
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        for state in inner.state.values():  # the same loader hands every group one shared
            if torch.is_tensor(state.get("step")):  # Adam step tensor, which each group would
                state["step"] = state["step"].clone()  # then advance: one counter each
        if path is None:
            raise TrainingError(f"--resume_from_checkpoint {directory}: DeepSpeed found no "
                                f"checkpoint for tag {tag}")


def adamw_kernel(device):
    """torch AdamW's fused kernel (all tensors in one pass) on GPU and on CPU, where it
    steps 5x faster than the default per-tensor loop (docs/benchmarks.md)."""
    return {"fused": True} if device.type in ("cuda", "cpu") else {}


def make_backend(settings):
    return DeepSpeedBackend(settings) if settings.deepspeed else TorchBackend(settings)
