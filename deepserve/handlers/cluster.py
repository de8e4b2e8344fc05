"""Nearest-centroid lookup for embedding models with k-means clusters (model.json ``clusters``).

``assign`` gives what scikit-learn's ``KMeans.predict`` / ``transform`` give on the same vectors
with the same centroids: the id of the nearest centroid and the distance to it. For the
``cosine`` metric the vectors are L2-normalised first and the centroids are unit vectors, so the
nearest centroid by Euclidean distance is the most similar by cosine, and the distance served is
``1 - cosine similarity`` (in [0, 2]); a ``normalize=true`` request gets the same cluster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepserve.handlers.base import ModelLoadError
from deepserve.store import ClusterSpec, TensorSpec

# one value per row, as Triton spells a per-row scalar of a batched model (dims [1])
CLUSTER_OUTPUTS = [
    TensorSpec(name="cluster", datatype="INT64", shape=[-1, 1]),
    TensorSpec(name="cluster_distance", datatype="FP32", shape=[-1, 1]),
]
CLUSTER_OUTPUT_NAMES = frozenset(t.name for t in CLUSTER_OUTPUTS)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    out: np.ndarray = vectors / np.maximum(norms, 1e-12)  # (n, D)
    return out


class Centroids:
    def __init__(self, centroids: np.ndarray, metric: str) -> None:
        self.metric = metric
        self.centroids = np.asarray(centroids, dtype=np.float64)  # (k, D)
        self._squared_norms = (self.centroids**2).sum(axis=1)  # (k,)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @classmethod
    def load(cls, version_dir: Path, spec: ClusterSpec, dim: int) -> Centroids:
        """Read and check ``spec.file``: (k, D) finite numbers, D the embedding's width (-1: any)."""
        path = version_dir / spec.file
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise _unusable(path, f"cannot be read: {exc}") from exc
        expected = (spec.k, dim if dim > 0 else array.shape[-1])
        if array.ndim != 2 or tuple(array.shape) != expected:
            raise _unusable(path, f"have shape {list(array.shape)}, model.json says {list(expected)}")
        if not np.isfinite(array).all():
            raise _unusable(path, "hold NaN or infinite values")
        return cls(array, spec.metric)

    def assign(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, D) vectors -> nearest centroid ids INT64 (n,) and distances FP32 (n,)."""
        x = np.asarray(vectors, dtype=np.float64)  # (n, D)
        if self.metric == "cosine":
            x = unit_rows(x)
        # argmin over ||x - c||^2 = |x|^2 - 2 x.c + |c|^2, the |x|^2 term being the same for every c
        ids = np.argmin(self._squared_norms - 2.0 * x @ self.centroids.T, axis=1)  # (n,)
        nearest = self.centroids[ids]  # (n, D)
        if self.metric == "cosine":
            distance = 1.0 - (x * nearest).sum(axis=1)
        else:
            distance = np.linalg.norm(x - nearest, axis=1)  # exact, not through the expansion above
        return ids.astype(np.int64), np.maximum(distance, 0.0).astype(np.float32)


def _unusable(path: Path, why: str) -> ModelLoadError:
    return ModelLoadError(f"cluster centroids {path} {why}; refit them with `deepserve cluster`")
