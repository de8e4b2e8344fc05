"""Embeddings: minilm and the transformer encoder (text), the VAE encoder (images).

The request parameter ``normalize`` (default false) L2-normalises each vector, for KServe v2
outputs as well as JSON answers. Answer: a list with one vector (list of floats) per input row,
the shape OpenAI-style ``/v1/embeddings`` wraps into ``data[i].embedding``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepserve.handlers.base import Tensors
from deepserve.handlers.graph import GraphHandler
from deepserve.handlers.params import bool_param


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    out: np.ndarray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)  # (n, D)
    return out


class EmbeddingHandler(GraphHandler):
    @property
    def output_name(self) -> str:
        return self.spec.outputs[0].name

    def transform(self, outputs: Tensors, parameters: dict[str, Any]) -> Tensors:
        if not bool_param(parameters, "normalize", False):
            return outputs
        return {**outputs, self.output_name: l2_normalize(outputs[self.output_name])}

    def answer(self, outputs: Tensors, parameters: dict[str, Any]) -> Any:
        return [[float(x) for x in row] for row in outputs[self.output_name]]
