"""What to export for a checkpoint: one ``GraphPlan`` per store model (a VAE gives two).

A plan holds the serving module, its signature (model_store/README.md, graph conventions),
example inputs and dynamic dims for the exporters, two held-out batches for parity, and the
model.json fields that depend on the task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from deepserve.export.parity import Arrays
from deepserve.store import Task, TensorSpec

BATCH_SIZES = (1, 13)  # both differ from the export example (2), one odd


@dataclass
class GraphPlan:
    suffix: str  # store name suffix: "" or "-decoder"
    task: Task
    module: nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    example: tuple[torch.Tensor, ...]
    dynamic: dict[str, dict[int, Any]]
    batches: list[Arrays]
    inputs_from: str
    max_batch_size: int
    classifier: bool = False
    int8: bool = False  # also write a dynamic int8 ONNX (transformer encoders, GPT)
    labels: list[str] = field(default_factory=list)
    preprocessing: dict[str, Any] | None = None
    generation: dict[str, Any] | None = None
    # GPT: (prompts, new tokens) for the check that step-by-step greedy generation equals eager
    greedy: tuple[list[list[int]], int] | None = None
    # files written beside the graphs, {name: text}: a tokenizer.json, a categories.json
    assets: dict[str, str] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def batch_dim() -> Any:
    return torch.export.Dim("batch", min=1, max=4096)


def split_batches(rows: dict[str, np.ndarray], sizes: tuple[int, ...] = BATCH_SIZES) -> list[Arrays]:
    """Two held-out batches of different sizes (fewer rows than asked: whatever is there)."""
    n = len(next(iter(rows.values())))
    out, start = [], 0
    for size in sizes:
        take = min(size, n - start) if n - start > 0 else min(size, n)
        sl = slice(start, start + take) if n - start > 0 else slice(0, take)
        out.append({k: np.ascontiguousarray(v[sl]) for k, v in rows.items()})
        start += take
    return out


def pad_rows(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad some rows to different lengths (pad id 0), as a batching server would."""
    ids, mask = ids.copy(), mask.copy()
    T = ids.shape[1]
    for i in range(1, len(ids)):
        keep = max(1, T - (i * 7) % max(1, T // 2))
        ids[i, keep:], mask[i, keep:] = 0, 0
    return ids, mask


def spec(name: str, datatype: str, shape: list[int]) -> TensorSpec:
    return TensorSpec(name=name, datatype=datatype, shape=shape)  # type: ignore[arg-type]
