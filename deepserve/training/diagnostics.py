"""Gradient-norm monitoring (the guide's training-practice chapter): per step and per layer group.

Every optimizer step records the L2 norm of the whole gradient and of each layer group's
(``groups.layer_groups``), measured before clipping. ``steps.csv`` gets one row per step,
``metrics.csv`` the per-epoch mean (and the largest total); ``curves.png`` plots them.
A warning goes to the ``deepserve.training`` logger (once per kind and run) when the norm
explodes - not finite, or more than ``EXPLODE_FACTOR`` times the median of the latest steps -
or vanishes - a total below ``VANISH_NORM``, or a trainable group under ``VANISH_RATIO`` of the
largest group's norm (its layers have stopped learning).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque

import torch
from torch import nn

from deepserve.training.groups import layer_groups

log = logging.getLogger("deepserve.training")

EXPLODE_FACTOR = 100.0
EXPLODE_AFTER = 5  # steps of history before the median means anything
RECENT = 50  # the median is over this many latest steps
VANISH_NORM = 1e-7
VANISH_RATIO = 1e-6


def group_norms(groups: list[tuple[str, list[nn.Parameter]]]) -> dict[str, float]:
    """L2 norm of each group's gradients (one device sync for all); frozen groups (no grads) left out."""
    names, norms = [], []
    for name, params in groups:
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            names.append(name)
            per_tensor = torch.stack([n.float() for n in torch._foreach_norm(grads)])
            norms.append(torch.linalg.vector_norm(per_tensor))
    return dict(zip(names, torch.stack(norms).tolist(), strict=True)) if norms else {}


class GradMonitor:
    """Measures the gradient of ``model`` after backward (and unscaling), before clipping.

    ``overflow_ok``: fp16 autocast's GradScaler makes non-finite gradients on purpose while it
    finds its scale (and skips those steps), so they are recorded but not warned about.
    """

    def __init__(self, model: nn.Module, *, overflow_ok: bool = False) -> None:
        self.groups = layer_groups(model)
        self.overflow_ok = overflow_ok
        self.rows: list[dict[str, float]] = []
        self._epoch_start = 0
        self._warned: set[str] = set()
        self._recent: deque[float] = deque(maxlen=RECENT)  # finite totals the median is taken over

    def measure(self, step: int, epoch: int) -> dict[str, float]:
        present = group_norms(self.groups)
        total = math.sqrt(sum(v * v for v in present.values())) if present else 0.0
        row: dict[str, float] = {"step": step, "epoch": epoch, "grad_norm": total}
        row |= {f"grad_norm.{k}": v for k, v in present.items()}
        self._check(row, present)
        self.rows.append(row)
        return row

    def _check(self, row: dict[str, float], groups: dict[str, float]) -> None:
        total, step = row["grad_norm"], int(row["step"])
        if not math.isfinite(total):
            if not self.overflow_ok:
                hint = "lower --lr or set --grad-clip"
                self._warn("explode", f"gradient norm is {total} at step {step}: {hint}")
            return
        history = self._recent
        median = statistics.median(history) if len(history) >= EXPLODE_AFTER else math.inf
        history.append(total)
        if total > EXPLODE_FACTOR * median:
            self._warn(
                "explode",
                f"gradient norm exploded at step {step}: {total:.3g}, {total / median:.0f}x the median "
                "so far; lower --lr or set --grad-clip",
            )
        if groups and total < VANISH_NORM:
            self._warn("vanish", f"gradient norm vanished at step {step}: {total:.3g} (nothing is learning)")
        elif groups:
            top = max(groups.values())
            dead = [name for name, v in groups.items() if v < VANISH_RATIO * top]
            if dead:
                self._warn(
                    "vanish",
                    f"gradients vanished in layer group(s) {', '.join(dead)} at step {step} "
                    f"(under {VANISH_RATIO:g} of the largest group's {top:.3g})",
                )

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(message)

    def epoch_summary(self) -> dict[str, float]:
        """Means over the steps since the last call (and the largest total), for the epoch's row."""
        rows, self._epoch_start = self.rows[self._epoch_start :], len(self.rows)
        if not rows:
            return {}
        keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("grad_norm")]
        out = {k: statistics.fmean(r[k] for r in rows if k in r) for k in keys}
        out["grad_norm_max"] = max(r["grad_norm"] for r in rows)
        return out
