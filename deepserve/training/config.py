"""``TrainConfig``: every knob of the training loop in one typed place.

The CLI (``training.train``) fills it from argparse, recipes start from their own defaults, and
the checkpoint stores it (``meta["train_config"]``) so a run can be repeated.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

OptimizerName = Literal["adamw", "adam", "sgd"]
SchedulerName = Literal["warmup-cosine", "cosine", "onecycle", "exponential", "plateau", "none"]

OPTIMIZERS: tuple[str, ...] = ("adamw", "adam", "sgd")
SCHEDULERS: tuple[str, ...] = ("warmup-cosine", "cosine", "onecycle", "exponential", "plateau", "none")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    optimizer: OptimizerName = "adamw"
    momentum: float = 0.9  # SGD only
    scheduler: SchedulerName = "warmup-cosine"
    warmup_frac: float = 0.05  # share of all optimizer steps spent warming up
    gamma: float = 0.9  # exponential decay per epoch; plateau reduction factor
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    patience: int | None = 5  # early stopping on val loss; None = off
    # ... and no sooner than this many optimizer steps after the best epoch: on a small dataset an
    # epoch is one or two steps, fewer than BatchNorm's running statistics need to settle, and the
    # val loss of the first epochs says nothing yet (45 images stopped at 8 steps, 56% accuracy)
    min_patience_steps: int = 50
    seed: int = 0
    bf16: bool = False  # bf16 autocast on CPU (CUDA always uses fp16 autocast + GradScaler)
    max_steps: int | None = None  # stop after this many optimizer steps (quick runs)
    max_seconds: float | None = None  # wall-clock budget; the lr schedule is sized to it
    threads: int | None = None  # torch intra-op threads; None = torch default
    profile: bool = False  # torch.profiler trace of a few steps -> trace.json beside the checkpoint
    extra: dict[str, Any] = field(default_factory=dict)  # recipe-specific (beta, latent_dim, ...)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        """A copy with the overrides applied: None keeps the recipe's value (a CLI flag left unset),
        ``OFF`` turns an optional setting off (``--patience 0``, ``--grad-clip 0``)."""
        return replace(self, **{k: None if v is OFF else v for k, v in overrides.items() if v is not None})


class _Off:
    def __repr__(self) -> str:
        return "OFF"


OFF: Any = _Off()  # an override that sets an optional field to None, where None itself means "keep"


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a generator for data shuffling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
