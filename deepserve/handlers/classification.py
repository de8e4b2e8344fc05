"""Classification (images, tabular rows, text): top-k labels with probabilities.

TorchServe-style answer (like its image classifier): for one row a dict ``{label: probability}``
of the top k, most probable first; for several rows a list of such dicts. ``top_k`` (default 5)
comes from the request parameters / query string. KServe v2 serves ``logits`` and a derived
``probabilities`` FP32 [-1, K] (softmax over the logits).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepserve.handlers.base import Tensors
from deepserve.handlers.graph import GraphHandler
from deepserve.handlers.params import int_param
from deepserve.store import TensorSpec

DEFAULT_TOP_K = 5


def softmax(logits: np.ndarray) -> np.ndarray:
    probs: np.ndarray = np.exp(logits - logits.max(axis=-1, keepdims=True), dtype=np.float32)  # (n, K)
    probs /= probs.sum(axis=-1, keepdims=True)
    return probs


class ClassificationHandler(GraphHandler):
    @property
    def num_classes(self) -> int:
        return self.spec.outputs[0].shape[-1] if self.spec.outputs[0].shape[-1] > 0 else len(self.spec.labels)

    @property
    def extra_outputs(self) -> list[TensorSpec]:
        return [TensorSpec(name="probabilities", datatype="FP32", shape=[-1, self.num_classes])]

    def label(self, index: int) -> str:
        return self.spec.labels[index] if index < len(self.spec.labels) else str(index)

    def derive(self, outputs: Tensors) -> Tensors:
        return {"probabilities": softmax(outputs[self.spec.outputs[0].name])}

    def answer(self, outputs: Tensors, parameters: dict[str, Any]) -> Any:
        probs = outputs["probabilities"]
        k = min(int_param(parameters, "top_k", DEFAULT_TOP_K, low=1), probs.shape[-1])
        rows = []
        for row in probs:
            top = np.argsort(-row, kind="stable")[:k]
            rows.append({self.label(int(i)): float(row[i]) for i in top})
        return rows[0] if len(rows) == 1 else rows
