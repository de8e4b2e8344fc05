"""Optimizers and learning-rate schedules of the guide, chosen by name from a ``TrainConfig``.

Schedules differ in *when* they step: warmup-cosine, cosine and one-cycle move every optimizer
step; exponential moves every epoch; reduce-on-plateau moves every epoch on the val loss.
``Schedule`` hides that so the loop calls ``after_step()`` and ``after_epoch(val_loss)``.
Under a wall-clock ``Budget`` the per-step warmup-cosine and cosine schedules advance by
whichever is further along, steps or time, so the lr reaches its floor when the budget ends
(a step-sized cosine would be cut off at a high lr). One-cycle stays step-sized.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import lr_scheduler

from deepserve.training.budget import Budget
from deepserve.training.config import TrainConfig


class ConfigError(ValueError):
    """A training option has a value the loop cannot use."""


ParamGroups = list[dict[str, Any]]


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | ParamGroups, cfg: TrainConfig
) -> torch.optim.Optimizer:
    """Plain parameters: the trainable ones, all at ``cfg.lr``. Param groups (dicts with their own
    ``lr``) are taken as they are, frozen parameters included: gradual unfreezing turns them on
    later, and the optimizer skips a parameter while it has no gradient."""
    items = list(params)
    if not all(isinstance(g, dict) for g in items):
        items = [p for p in items if isinstance(p, torch.nn.Parameter) and p.requires_grad]
    params = items  # type: ignore[assignment]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; choose adamw, adam or sgd")


def warmup_cosine(
    total_steps: int, warmup_steps: int, floor: float = 0.05, budget: Budget | None = None
) -> lr_scheduler.LRLambda:
    """Linear warm-up to the base lr, then cosine decay down to ``floor`` x base lr.

    With a budget, a step counts as at least the spent share of the budget times ``total_steps``.
    """

    def factor(step: int) -> float:
        if budget is not None:
            step = max(step, int(budget.fraction() * total_steps))
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class Schedule:
    """One lr schedule with a uniform stepping interface."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: TrainConfig,
        total_steps: int,
        budget: Budget | None = None,
    ) -> None:
        total_steps = max(1, total_steps)
        self.per_step = cfg.scheduler in ("warmup-cosine", "cosine", "onecycle")
        self.sched: lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau | None
        if cfg.scheduler == "warmup-cosine":
            warmup = max(1, round(cfg.warmup_frac * total_steps))
            self.sched = lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup, budget=budget))
        elif cfg.scheduler == "cosine" and budget is not None and budget.max_seconds is not None:
            self.sched = lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, 0, 0.0, budget))
        elif cfg.scheduler == "cosine":
            self.sched = lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        elif cfg.scheduler == "onecycle":
            peaks = [float(g["lr"]) for g in optimizer.param_groups]  # per group: differential rates
            self.sched = lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total_steps + 1)
        elif cfg.scheduler == "exponential":
            self.sched = lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma)
        elif cfg.scheduler == "plateau":
            self.sched = lr_scheduler.ReduceLROnPlateau(optimizer, factor=cfg.gamma, patience=1)
        elif cfg.scheduler == "none":
            self.sched = None
        else:
            raise ConfigError(
                f"unknown scheduler {cfg.scheduler!r}; choose one of warmup-cosine, cosine, "
                "onecycle, exponential, plateau, none"
            )
        self.optimizer = optimizer

    def after_step(self) -> None:
        if self.per_step and self.sched is not None:
            self.sched.step()

    def after_epoch(self, val_loss: float) -> None:
        if isinstance(self.sched, lr_scheduler.ReduceLROnPlateau):
            self.sched.step(val_loss)
        elif not self.per_step and self.sched is not None:
            self.sched.step()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])
