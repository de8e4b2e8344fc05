"""Parity of an exported variant against the eager fp32 model: measures, thresholds, verdicts.

Each check runs the variant and the eager model on the same held-out inputs and records, per
output: max abs error, relative error ``||out - ref|| / ||ref||``, the minimum per-row cosine, and
for classifiers the top-1 agreement. fp32 variants must be exact up to float noise (a miss fails
the export); lower precisions that miss are recorded as unusable, never served silently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

Arrays = dict[str, np.ndarray]
Runner = Callable[[Arrays], Arrays]

# Tolerances: fp32 float noise; fp16 1e-2 (fp16 exports of the zoo measured 1e-4 - 1.3e-3);
# bf16 measured 3-8e-3 on the zoo; int8 judged by direction/decision, not by value.
THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"rel": 1e-4},
    "fp16": {"rel": 1e-2, "top1": 0.99},
    "bf16": {"rel": 2e-2, "top1": 0.99},
    "int8": {"cosine": 0.98, "top1": 0.95},
}


class Verdict(NamedTuple):
    ok: bool
    reason: str | None


def compare(ref: np.ndarray, out: np.ndarray, *, classifier: bool) -> dict[str, float]:
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    diff = out64 - ref64
    rows_ref = ref64.reshape(ref64.shape[0], -1)
    rows_out = out64.reshape(out64.shape[0], -1)
    if rows_ref.shape[1] < 2:  # a scalar per row has no direction: use the whole batch as one vector
        rows_ref, rows_out = rows_ref.reshape(1, -1), rows_out.reshape(1, -1)
    dots = (rows_ref * rows_out).sum(1)
    norms = np.linalg.norm(rows_ref, axis=1) * np.linalg.norm(rows_out, axis=1)
    cosine = np.where(norms > 0, dots / np.maximum(norms, 1e-300), 1.0)
    result = {
        "max_abs": float(np.abs(diff).max(initial=0.0)),
        "rel": float(np.linalg.norm(diff) / max(np.linalg.norm(ref64), 1e-12)),
        "cosine": float(cosine.min(initial=1.0)),
    }
    if classifier:
        result["top1"] = float((ref64.argmax(-1) == out64.argmax(-1)).mean())
    return result


def judge(limits: dict[str, float], checks: list[dict[str, Any]]) -> Verdict:
    """The first metric over (or under) its threshold, named with its value."""
    for check in checks:
        where = f"batch {check['batch_size']}, output {check['output']!r}"
        if "rel" in limits and check["rel"] > limits["rel"]:
            return Verdict(False, f"relative error {check['rel']:.3g} > {limits['rel']:g} ({where})")
        if "cosine" in limits and check["cosine"] < limits["cosine"]:
            return Verdict(False, f"cosine {check['cosine']:.5f} < {limits['cosine']:g} ({where})")
        if "top1" in limits and "top1" in check and check["top1"] < limits["top1"]:
            return Verdict(False, f"top-1 agreement {check['top1']:.3f} < {limits['top1']:g} ({where})")
    return Verdict(True, None)


def measure(
    runner: Runner, reference: Runner, batches: list[Arrays], *, classifier_outputs: set[str]
) -> list[dict[str, Any]]:
    checks = []
    for inputs in batches:
        ref, out = reference(inputs), runner(inputs)
        batch = int(next(iter(inputs.values())).shape[0])
        for name, ref_value in ref.items():
            metrics = compare(ref_value, out[name], classifier=name in classifier_outputs)
            checks.append({"batch_size": batch, "output": name, **metrics})
    return checks


def torch_runner(module: nn.Module, input_names: list[str], output_names: list[str]) -> Runner:
    def run(inputs: Arrays) -> Arrays:
        with torch.no_grad():
            out = module(*[torch.from_numpy(inputs[n]) for n in input_names])
        outs = out if isinstance(out, tuple) else (out,)
        return {n: o.detach().float().numpy() for n, o in zip(output_names, outs, strict=True)}

    return run


def ort_runner(session: Any) -> Runner:
    names = [o.name for o in session.get_outputs()]

    def run(inputs: Arrays) -> Arrays:
        return dict(zip(names, session.run(names, inputs), strict=True))

    return run
