"""The learning rate of every optimizer step: the official ConvNeXt schedule (a linear warm-up, then a cosine over
the epochs left), or timm's step decay."""

from __future__ import annotations

import math

import torch


class WarmupCosine:
    """The official ConvNeXt schedule (`utils.cosine_scheduler`), per optimizer step: from `warmup_lr` up to the
    optimizer's lr over the warm-up steps, both ends included, then a cosine from that lr down to `min_lr` over the
    steps that are left, starting where the warm-up ends (docs/gpu.md: how timm's CosineLRScheduler differs)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, warmup_lr: float,
                 min_lr: float):
        self.optimizer, self.total, self.warmup = optimizer, total_steps, warmup_steps
        self.start, self.final = warmup_lr, min_lr
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.step_update(0)

    def lr(self, base: float, step: int) -> float:
        """The lr of optimizer step `step` (0-based) for a group whose peak is `base`."""
        if step < self.warmup:  # numpy.linspace(warmup_lr, base, warmup_steps)[step]
            return self.start + (base - self.start) * step / (self.warmup - 1) if self.warmup > 1 else self.start
        left = self.total - self.warmup
        return self.final + 0.5 * (base - self.final) * (1 + math.cos(math.pi * min(step - self.warmup, left) / left))

    def step_update(self, num_updates: int) -> None:
        """Set the lr of the next optimizer step, `num_updates` steps having been taken (timm's call)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(group["initial_lr"], num_updates)

    def state_dict(self) -> dict:
        return {}  # a function of the config and the step: nothing to keep

    def load_state_dict(self, state: dict) -> None:
        pass  # the optimizer's state brings back each group's lr and initial_lr


def build_schedule(optimizer: torch.optim.Optimizer, t, steps_per_epoch: int):
    """`train.sched`, counted in optimizer steps: `cosine` the official warm-up and cosine, `step` timm's step
    decay after the same linear warm-up (torchvision's ResNet recipe)."""
    warmup = t.warmup_epochs * steps_per_epoch
    if t.sched == "step":
        from timm.scheduler import StepLRScheduler

        return StepLRScheduler(optimizer, decay_t=t.decay_epochs * steps_per_epoch, decay_rate=t.decay_rate,
                               warmup_t=warmup, warmup_lr_init=t.warmup_lr, t_in_epochs=False)
    return WarmupCosine(optimizer, t.epochs * steps_per_epoch, warmup, t.warmup_lr, t.min_lr)
