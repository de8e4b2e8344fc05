"""Regression: named targets in their original units (the graph de-scales).

Answer: for one row ``{target: value}``; for several rows a list of such dicts. Target names
come from model.json ``preprocessing.targets`` (``target_<i>`` when absent).
"""

from __future__ import annotations

from typing import Any

from deepserve.handlers.base import Tensors
from deepserve.handlers.graph import GraphHandler
from deepserve.store import TabularPreprocessing


class RegressionHandler(GraphHandler):
    @property
    def targets(self) -> list[str]:
        pre = self.spec.preprocessing
        width = self.spec.outputs[0].shape[-1]
        if isinstance(pre, TabularPreprocessing) and pre.targets:
            return list(pre.targets)
        return [f"target_{i}" for i in range(max(width, 1))]

    def answer(self, outputs: Tensors, parameters: dict[str, Any]) -> Any:
        values = outputs[self.spec.outputs[0].name]  # (n, T)
        names = self.targets
        flat = values.reshape(len(values), -1)
        rows = [{name: float(v) for name, v in zip(names, row, strict=True)} for row in flat]
        return rows[0] if len(rows) == 1 else rows
