"""Embeddings: minilm and the transformer encoder (text), the VAE encoder (images).

The request parameter ``normalize`` (default false) L2-normalises each vector, for KServe v2
outputs as well as JSON answers. Answer: a list with one vector (list of floats) per input row,
the shape OpenAI-style ``/v1/embeddings`` wraps into ``data[i].embedding``.

A version with k-means clusters (model.json ``clusters``, fitted by ``deepserve cluster``) also
serves ``cluster`` INT64 [-1, 1] (the nearest centroid's id) and ``cluster_distance`` FP32 [-1, 1]
over KServe v2; with the parameter ``cluster=true`` the JSON answer becomes
``{"embeddings": [...], "clusters": [{"id": 3, "distance": 0.21}, ...]}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepserve.handlers.base import InvalidInputError, ModelLoadError, Tensors
from deepserve.handlers.cluster import CLUSTER_OUTPUT_NAMES, CLUSTER_OUTPUTS, Centroids, unit_rows
from deepserve.handlers.graph import GraphHandler
from deepserve.handlers.params import bool_param
from deepserve.store import TensorSpec


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    out: np.ndarray = unit_rows(vectors).astype(np.float32)  # (n, D)
    return out


class EmbeddingHandler(GraphHandler):
    centroids: Centroids | None = None

    @property
    def output_name(self) -> str:
        return self.spec.outputs[0].name

    @property
    def extra_outputs(self) -> list[TensorSpec]:
        return list(CLUSTER_OUTPUTS) if self.spec.clusters is not None else []

    def load(self) -> None:
        super().load()
        clusters = self.spec.clusters
        if clusters is None or self.centroids is not None:
            return
        output = next((t for t in self.spec.outputs if t.name == clusters.output), None)
        if output is None:
            served = [t.name for t in self.spec.outputs]
            raise ModelLoadError(f"model.json clusters are over output {clusters.output!r}, which this model "
                                 f"lacks ({served}); refit them with `deepserve cluster`")  # fmt: skip
        self.centroids = Centroids.load(self.version_dir, clusters, output.shape[-1])

    def assign_clusters(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid ids (n,) and distances (n,) of raw embedding vectors (n, D)."""
        if self.centroids is None:
            raise InvalidInputError(self.no_clusters())
        return self.centroids.assign(vectors)

    def no_clusters(self) -> str:
        return (f"model {self.spec.name!r} v{self.spec.version} has no clusters; fit them with "
                f"`deepserve cluster --model {self.spec.name} --store DIR`")  # fmt: skip

    def derive(self, outputs: Tensors) -> Tensors:
        if self.centroids is None:
            return {}
        assert self.spec.clusters is not None  # centroids come only from it
        ids, distances = self.centroids.assign(outputs[self.spec.clusters.output])
        return {"cluster": ids[:, None], "cluster_distance": distances[:, None]}  # (n, 1) each

    def transform(self, outputs: Tensors, parameters: dict[str, Any]) -> Tensors:
        if not bool_param(parameters, "normalize", False):
            return outputs
        return {**outputs, self.output_name: l2_normalize(outputs[self.output_name])}

    def select(self, outputs: Tensors, names: list[str] | None) -> Tensors:
        if names is not None and self.centroids is None and CLUSTER_OUTPUT_NAMES.intersection(names):
            raise InvalidInputError(self.no_clusters())
        return super().select(outputs, names)

    def answer(self, outputs: Tensors, parameters: dict[str, Any]) -> Any:
        vectors = [[float(x) for x in row] for row in outputs[self.output_name]]
        if not bool_param(parameters, "cluster", False):
            return vectors
        if self.centroids is None:
            raise InvalidInputError(self.no_clusters())
        ids, distances = outputs["cluster"][:, 0], outputs["cluster_distance"][:, 0]
        clusters = [{"id": int(i), "distance": float(d)} for i, d in zip(ids, distances, strict=True)]
        return {"embeddings": vectors, "clusters": clusters}
