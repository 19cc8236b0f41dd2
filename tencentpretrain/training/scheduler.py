"""Learning-rate schedules as a multiplier of ``--learning_rate`` per optimizer step.

TencentPretrain's names: ``constant`` is 1 at every step (no warm-up); the others warm up
linearly over ``warmup * total_steps`` steps, then ``constant_with_warmup`` stays at 1,
``linear`` decays to 0 at ``total_steps``, ``cosine`` follows half a cosine to 0, and
``polynomial`` decays as (1 - progress) ** power to 0, the power being ``--lr_decay``
(TencentPretrain's float option, default 0.5). The multiplier is a plain function of the step
(not an object whose fields a checkpoint would restore), so a resumed run follows
the schedule of its own command line and gets the same rates as an unbroken run.
"""
import math

import torch

SCHEDULERS = ("linear", "cosine", "polynomial", "constant", "constant_with_warmup")


def lr_multiplier(kind, total_steps, warmup, power=0.5):
    if kind not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {kind!r}; known: {', '.join(SCHEDULERS)}")
    warmup_steps = 0 if kind == "constant" else int(total_steps * warmup)

    def multiplier(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind in ("constant", "constant_with_warmup"):
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if kind == "linear":
            return 1.0 - progress
        if kind == "polynomial":
            return (1.0 - progress) ** power
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def build_scheduler(optimizer, multiplier):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def resume_schedule(scheduler, learning_rate):
    """After a checkpoint's optimizer and scheduler states are loaded (they hold the saved
    run's rates): the rate of the next step from this run's ``--learning_rate`` and schedule,
    so options changed on resume apply from the first resumed step. Unchanged options give
    the rate LambdaLR itself would (the same expression), so an exact resume stays exact."""
    scheduler.base_lrs = [learning_rate] * len(scheduler.base_lrs)
    for group, multiplier in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * multiplier(scheduler.last_epoch)
