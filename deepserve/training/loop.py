"""The guide's supervised training loop (chapter 16), made reusable.

One ``fit`` serves every supervised recipe: the caller passes ``loss_fn(model, batch) -> loss``,
so images, tabular rows, token ids and language-model windows all go through the same code.
It does AdamW / Adam / SGD, a per-step or per-epoch lr schedule, gradient clipping, gradient
accumulation, early stopping on the val loss restoring the best weights, CUDA autocast with a
GradScaler (bf16 autocast on CPU on request) and DDP-aware gradient sync. ``max_steps`` and the
wall-clock ``max_seconds`` both end training between batches; the best-val-loss weights are kept.

Transfer learning plugs in through ``param_groups`` (differential learning rates) and
``before_epoch(model, epoch)`` (freezing / gradual unfreezing, called after ``model.train()``).
Every step records gradient norms per layer group (diagnostics.py); ``trace_path`` profiles a few
steps (profiling.py).
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from deepserve.training.budget import Budget
from deepserve.training.config import TrainConfig
from deepserve.training.diagnostics import GradMonitor
from deepserve.training.distributed import DistContext, set_epoch, unwrap
from deepserve.training.optim import ParamGroups, Schedule, build_optimizer
from deepserve.training.profiling import StepProfiler

Batch = tuple[Tensor, ...]
LossFn = Callable[[nn.Module, Batch], Tensor]
ValMetric = Callable[[nn.Module], dict[str, float]]
EpochHook = Callable[[nn.Module, int], None]


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    step_history: list[dict[str, float]] = field(default_factory=list)  # gradient norms per step
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False
    out_of_time: bool = False  # stopped by ``max_seconds``
    steps: int = 0
    seconds: float = 0.0


def autocast(device: torch.device, bf16: bool = False) -> contextlib.AbstractContextManager[Any]:
    """fp16 autocast on CUDA; bf16 autocast on CPU only when asked; otherwise plain fp32."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: Batch, device: torch.device) -> Batch:
    return tuple(t.to(device, non_blocking=True) for t in batch)


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, loader: DataLoader, loss_fn: LossFn, device: torch.device, bf16: bool = False
) -> float:
    """Mean loss over the loader, weighted by batch size."""
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device, bf16):
            loss = loss_fn(model, batch)
        total += float(loss) * len(batch[0])
        count += len(batch[0])
    return total / max(1, count)


def show_progress(ctx: DistContext, progress: bool | None) -> bool:
    return (sys.stderr.isatty() if progress is None else progress) and ctx.is_main


class _Stepper:
    """Backward with accumulation; optimizer step + clip + schedule every ``grad_accum`` batches."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        device: torch.device,
        total_steps: int,
        budget: Budget,
        param_groups: ParamGroups | None = None,
        profiler: StepProfiler | None = None,
    ) -> None:
        self.model, self.cfg, self.budget = model, cfg, budget
        self.optimizer = build_optimizer(param_groups or model.parameters(), cfg)
        self.schedule = Schedule(self.optimizer, cfg, total_steps, budget)
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
        self.monitor = GradMonitor(unwrap(model), overflow_ok=self.scaler.is_enabled())
        self.profiler = profiler or StepProfiler(None)
        self.steps, self.out_of_time, self.epoch = 0, False, 0

    def backward(self, loss: Tensor, step_now: bool, ddp: bool) -> None:
        # Under DDP, skip the gradient all-reduce on batches that only accumulate.
        sync = self.model.no_sync() if (ddp and not step_now) else contextlib.nullcontext()
        with sync:
            self.scaler.scale(loss / self.cfg.grad_accum).backward()
        if step_now:
            self._step()

    def _step(self) -> None:
        self.scaler.unscale_(self.optimizer)  # true gradients for the norms and the clip (no-op on CPU)
        self.monitor.measure(self.steps + 1, self.epoch)
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.after_step()
        self.steps += 1
        self.profiler.step()

    def done(self, ddp: bool) -> bool:
        """``max_steps`` reached or the time budget spent (on any rank: all must stop together)."""
        expired = self.budget.expired()
        if ddp and self.budget.max_seconds is not None:
            flag = torch.tensor([float(expired)])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            expired = bool(flag.item())
        self.out_of_time = expired
        return expired or (self.cfg.max_steps is not None and self.steps >= self.cfg.max_steps)


def _batches(loader: DataLoader, desc: str, show: bool) -> Iterator[tuple[int, Batch, Any]]:
    bar = tqdm(loader, desc=desc, leave=False, disable=not show, dynamic_ncols=True)
    for i, batch in enumerate(bar):
        yield i, batch, bar


def _mean_across_ranks(value: float, ctx: DistContext) -> float:
    # BatchNorm buffers drift apart between ranks, so ranks must agree on one val loss
    # or their early-stopping decisions could diverge and the process group would hang.
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / ctx.world_size


def _train_epoch(
    model: nn.Module,
    train: DataLoader,
    loss_fn: LossFn,
    stepper: _Stepper,
    *,
    device: torch.device,
    ddp: bool,
    desc: str,
    show: bool,
    before_epoch: EpochHook | None = None,
) -> float:
    """One pass over ``train``; returns the mean training loss."""
    model.train()
    if before_epoch is not None:
        before_epoch(unwrap(model), stepper.epoch)
    cfg, running, seen = stepper.cfg, 0.0, 0
    for i, batch, bar in _batches(train, desc, show):
        batch = to_device(batch, device)
        with autocast(device, cfg.bf16):
            loss = loss_fn(model, batch)
        step_now = (i + 1) % cfg.grad_accum == 0 or i + 1 == len(train)
        stepper.backward(loss, step_now, ddp)
        running, seen = running + float(loss.detach()) * len(batch[0]), seen + len(batch[0])
        bar.set_postfix(loss=f"{running / seen:.4f}", refresh=False)
        if step_now and stepper.done(ddp):
            break
    return running / max(1, seen)


def _format(row: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


@dataclass
class _Best:
    """Early-stopping state: the best val loss so far, its weights, and epochs since."""

    state: dict[str, Tensor] | None = None
    stale: int = 0
    step: int = 0

    def update(self, result: FitResult, core: nn.Module, epoch: int, val_loss: float, steps: int) -> None:
        if val_loss < result.best_val_loss:
            result.best_val_loss, result.best_epoch, self.stale, self.step = val_loss, epoch, 0, steps
            self.state = copy.deepcopy(core.state_dict())
        else:
            self.stale += 1

    def patience_spent(self, cfg: TrainConfig, steps: int) -> bool:
        return (
            cfg.patience is not None
            and self.stale >= cfg.patience
            and steps - self.step >= cfg.min_patience_steps
        )


def fit(
    model: nn.Module,
    train: DataLoader,
    val: DataLoader,
    loss_fn: LossFn,
    cfg: TrainConfig,
    *,
    device: torch.device,
    ctx: DistContext | None = None,
    val_metric: ValMetric | None = None,
    progress: bool | None = None,
    param_groups: ParamGroups | None = None,
    before_epoch: EpochHook | None = None,
    trace_path: Path | None = None,
) -> FitResult:
    """Train ``model`` (possibly DDP-wrapped) and leave the best-val-loss weights in it."""
    ctx = ctx or DistContext()
    per_epoch = math.ceil(len(train) / cfg.grad_accum)
    total = cfg.epochs * per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * per_epoch)
    show, result, best = show_progress(ctx, progress), FitResult(), _Best()
    profiler = StepProfiler(trace_path if ctx.is_main else None, show=ctx.is_main)
    stepper = _Stepper(model, cfg, device, total, Budget(cfg.max_seconds), param_groups, profiler)
    start = time.perf_counter()
    with profiler:
        for epoch in range(1, cfg.epochs + 1):
            set_epoch(train, epoch)
            stepper.epoch = epoch
            desc = f"epoch {epoch}/{cfg.epochs}"
            train_loss = _train_epoch(
                model, train, loss_fn, stepper, device=device, ddp=ctx.enabled, desc=desc, show=show,
                before_epoch=before_epoch,
            )  # fmt: skip
            core = unwrap(model)
            val_loss = _mean_across_ranks(evaluate_loss(core, val, loss_fn, device, cfg.bf16), ctx)
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": stepper.schedule.lr,
                   "seconds": time.perf_counter() - start}  # fmt: skip
            row.update(val_metric(core) if val_metric is not None else {})
            row.update(stepper.monitor.epoch_summary())
            result.history.append(row)
            stepper.schedule.after_epoch(val_loss)
            if show:
                tqdm.write(_format(row), file=sys.stderr)
            best.update(result, core, epoch, val_loss, stepper.steps)
            result.stopped_early = best.patience_spent(cfg, stepper.steps)
            if result.stopped_early or stepper.done(ctx.enabled):
                break
    if best.state is not None:
        unwrap(model).load_state_dict(best.state)
    result.steps, result.seconds = stepper.steps, time.perf_counter() - start
    result.out_of_time, result.step_history = stepper.out_of_time, stepper.monitor.rows
    return result
