"""Supervised jobs: image / tabular / text classification and tabular regression.

Builds the model, runs ``loop.fit`` (DDP-aware), scores the best weights on the test split on
rank 0 and writes the outputs. Regression metrics are reported in the original target units.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from deepserve.models import build_model
from deepserve.training import distributed as ddp
from deepserve.training.augment import Augment, build_augment, random_shift
from deepserve.training.config import seed_everything
from deepserve.training.job import Job, finish
from deepserve.training.loop import Batch, LossFn, ValMetric, fit
from deepserve.training.metrics import classification_metrics, regression_metrics

EVAL_BATCH = 256


def job_augment(job: Job) -> Augment | None:
    """The job's augmentation: ``True`` is the built-in digits recipes' 1-pixel shift; a tuple names them."""
    names = job.augment if isinstance(job.augment, tuple) else (("shift",) if job.augment else ())
    prep = job.data.preprocessing
    return build_augment(names, prep.get("mean", []), prep.get("std", []))


def loss_for(task: str, augment: Augment | bool | None = None) -> LossFn:
    """Cross-entropy or MSE; ``augment`` (True: a 1-pixel shift) applies to training batches only."""
    transform = random_shift if augment is True else augment or None

    def loss_fn(model: nn.Module, batch: Batch) -> Tensor:
        *inputs, y = batch
        if transform is not None and model.training:
            inputs[0] = transform(inputs[0])
        out = model(*inputs)
        return F.cross_entropy(out, y) if task == "classification" else F.mse_loss(out, y)

    return loss_fn


@torch.no_grad()
def predict(model: nn.Module, dataset: TensorDataset, device: torch.device) -> tuple[Tensor, Tensor]:
    """Model outputs and targets over a whole split, in eval mode."""
    model.eval()
    outs, ys = [], []
    for *inputs, y in DataLoader(dataset, batch_size=EVAL_BATCH):
        outs.append(model(*(t.to(device) for t in inputs)).float().cpu())
        ys.append(y)
    return torch.cat(outs), torch.cat(ys)


def evaluate(model: nn.Module, job: Job, dataset: TensorDataset, device: torch.device) -> dict[str, Any]:
    out, y = predict(model, dataset, device)
    if job.data.task == "classification":
        return classification_metrics(out, y)
    prep = job.data.preprocessing  # de-standardise: metrics in the target's own units
    mean, std = torch.tensor(prep["target_mean"]), torch.tensor(prep["target_std"])
    return regression_metrics(out * std + mean, y * std + mean)


def val_metric(job: Job, device: torch.device) -> ValMetric:
    key = "val_accuracy" if job.data.task == "classification" else "val_r2"

    def metric(model: nn.Module) -> dict[str, float]:
        m = evaluate(model, job, job.data.val, device)
        return {key: float(m["accuracy" if key == "val_accuracy" else "r2"])}

    return metric


def train_supervised(job: Job, ctx: ddp.DistContext | None = None) -> Path:
    ctx = ctx or ddp.DistContext()
    generator = seed_everything(job.cfg.seed)
    device = ddp.pick_device(ctx)
    model = build_model(job.model_name, **job.model_config).to(device)
    wrapped = ddp.wrap(model, ctx, device)
    # drop_last avoids a 1-row batch, which BatchNorm cannot train on
    drop_last = len(job.data.train) > job.cfg.batch_size
    train = ddp.train_loader(job.data.train, job.cfg.batch_size, ctx, generator, drop_last=drop_last)
    val = DataLoader(job.data.val, batch_size=EVAL_BATCH)
    result = fit(
        wrapped,
        train,
        val,
        loss_for(job.data.task, job_augment(job)),
        job.cfg,
        device=device,
        ctx=ctx,
        val_metric=val_metric(job, device),
        progress=job.progress,
        trace_path=job.trace_path,
    )
    if ctx.is_main:
        metrics = evaluate(model, job, job.data.test, device)
        finish(job, model, metrics, result, extra_summary={"world_size": ctx.world_size})
    return job.checkpoint_path
