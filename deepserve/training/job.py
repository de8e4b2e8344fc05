"""One training job: what to train on what, and how its results are written.

A recipe (built-in or the user's data) becomes a ``Job``; the trainer for its kind
(supervised / language model / VAE / GAN) runs it and calls ``finish`` on rank 0, which writes
``checkpoint.pt``, ``metrics.json``, ``metrics.csv``, ``steps.csv`` and ``curves.png`` into ``out_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepserve.training.checkpoint import Checkpoint, save_checkpoint
from deepserve.training.config import TrainConfig
from deepserve.training.data import TaskData
from deepserve.training.loop import FitResult
from deepserve.training.report import plot_curves, write_metrics


@dataclass
class Job:
    recipe: str  # built-in recipe name or "custom"
    model_name: str
    model_config: dict[str, Any]
    data: TaskData
    cfg: TrainConfig
    out_dir: Path
    augment: bool | tuple[str, ...] = False  # True: 1-pixel random shifts; names: augment.py
    progress: bool | None = None  # None: a bar only on a TTY
    meta: dict[str, Any] = field(default_factory=dict)  # extra meta (generation defaults, latent_dim, ...)

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    @property
    def trace_path(self) -> Path | None:
        """Where ``--profile`` writes its Chrome trace (None: not profiling)."""
        return self.out_dir / "trace.json" if self.cfg.profile else None


def finish(
    job: Job,
    model: nn.Module,
    metrics: dict[str, Any],
    fit: FitResult | None,
    history: list[dict[str, float]] | None = None,
    *,
    task: str | None = None,
    extra_summary: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint (meta as documented in training/checkpoint.py) and the run report."""
    history = history if history is not None else (fit.history if fit else [])
    meta: dict[str, Any] = {
        "task": task or job.data.task,
        "labels": list(job.data.labels),
        "preprocessing": job.data.preprocessing,
        "metrics": metrics,
        "data_fingerprint": job.data.fingerprint,
        "data_source": job.data.source,
        "recipe": job.recipe,
        "train_config": job.cfg.to_dict(),
        # a plain str: torch.__version__ is a TorchVersion, which weights_only loading refuses
        "torch_version": str(torch.__version__),
        **({"assets": dict(job.data.assets)} if job.data.assets else {}),
        **job.meta,
    }
    ckpt = Checkpoint(job.model_name, dict(job.model_config), model.state_dict(), meta)
    save_checkpoint(ckpt, job.checkpoint_path)
    summary: dict[str, Any] = {
        "recipe": job.recipe,
        "model": job.model_name,
        "task": meta["task"],
        "test": metrics,
    }
    if fit is not None:
        summary |= {
            "best_epoch": fit.best_epoch,
            "best_val_loss": fit.best_val_loss,
            "stopped_early": fit.stopped_early,
            "out_of_time": fit.out_of_time,
            "steps": fit.steps,
            "train_seconds": fit.seconds,
        }
    summary |= extra_summary or {}
    steps = fit.step_history if fit else None
    write_metrics(job.out_dir, summary, history, steps)
    if history:
        plot_curves(job.out_dir, history, f"{job.recipe}: {job.model_name}", steps)
    return job.checkpoint_path
