"""Offline datasets: sklearn's bundled sets and Python's own reference text, split deterministically.

Every loader returns a ``TaskData``: train / val / test ``TensorDataset``s already in the form the
model trains on (normalised images and features, standardised regression targets), plus what the
checkpoint ``meta`` must carry so export can bake the same arithmetic into the graph
(``preprocessing``), the label names, and a fingerprint of the raw data.
Splits use a fixed seed independent of the training seed, so every run is scored on the same test set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from deepserve.training.checkpoint import fingerprint
from deepserve.training.features import TabularTransform, categorical_columns, scaler_stats

SPLIT_SEED = 1234
BYTE_VOCAB = 256


class DataError(ValueError):
    """The input data cannot be trained on; the message names the problem and the fix."""


@dataclass
class TaskData:
    task: str  # "classification" | "regression" | "text-generation"
    modality: str  # "image" | "tabular" | "text"
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    preprocessing: dict[str, Any]
    fingerprint: str
    labels: list[str] = field(default_factory=list)
    source: str = ""
    # files the exported version needs beside its graph, by name (a tokenizer.json), as text
    assets: dict[str, str] = field(default_factory=dict)


def split_indices(n: int, val_frac: float = 0.1, test_frac: float = 0.2) -> tuple[Tensor, Tensor, Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test, n_val = max(1, round(n * test_frac)), max(1, round(n * val_frac))
    return perm[n_test + n_val :], perm[n_test : n_test + n_val], perm[:n_test]


def _stats(x: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    mean, std = x.mean(dims), x.std(dims)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))  # constant columns stay as they are


def image_data(
    pixels: Tensor, y: Tensor, labels: list[str], source: str, *, normalise: bool = True
) -> TaskData:
    """``pixels`` (N, C, H, W) in [0, 1] -> normalised splits; mean/std are per channel, from train only."""
    tr, va, te = split_indices(len(pixels))
    c, h, w = pixels.shape[1:]
    if normalise:
        mean, std = _stats(pixels[tr], (0, 2, 3))
    else:
        mean, std = torch.zeros(c), torch.ones(c)
    x = (pixels - mean.view(1, c, 1, 1)) / std.view(1, c, 1, 1)
    prep = {
        "kind": "image",
        "channels": c,
        "height": h,
        "width": w,
        "mean": mean.tolist(),
        "std": std.tolist(),
    }
    return TaskData(
        "classification",
        "image",
        TensorDataset(x[tr], y[tr]),
        TensorDataset(x[va], y[va]),
        TensorDataset(x[te], y[te]),
        prep,
        fingerprint(pixels, y),
        labels,
        source,
    )


def tabular_data(
    x: Tensor,
    y: Tensor,
    features: list[str],
    *,
    labels: list[str] | None = None,
    targets: list[str] | None = None,
    source: str = "",
    scaler: str = "standard",
    categories: dict[str, list[str]] | None = None,
) -> TaskData:
    """Classification when ``labels`` is given, regression (standardised targets) when ``targets`` is.

    Numeric columns are scaled by ``scaler`` (features.py); the ``categories`` columns hold codes
    and are one-hot encoded. ``preprocessing`` records what export bakes into the graph.
    """
    tr, va, te = split_indices(len(x))
    digest = fingerprint(x, y)  # of the raw values, before any scaling
    one_hot = categorical_columns(features, categories or {})
    numeric = [i for i in range(x.shape[1]) if i not in one_hot]
    mean, std = torch.zeros(x.shape[1]), torch.ones(x.shape[1])
    mean[numeric], std[numeric] = scaler_stats(x[tr][:, numeric], scaler)
    with torch.no_grad():
        xs = TabularTransform(mean.tolist(), std.tolist(), one_hot)(x)
    prep: dict[str, Any] = {
        "kind": "tabular",
        "features": features,
        "mean": mean.tolist(),  # the scaler's center
        "std": std.tolist(),  # ... and scale
        "scaler": scaler,
    }
    if categories:
        prep["categories"] = categories
    if targets is not None:
        y = y.reshape(len(y), -1).float()
        t_mean, t_std = _stats(y[tr], (0,))
        y = (y - t_mean) / t_std
        prep |= {"targets": targets, "target_mean": t_mean.tolist(), "target_std": t_std.tolist()}
    task = "regression" if targets is not None else "classification"
    return TaskData(
        task,
        "tabular",
        TensorDataset(xs[tr], y[tr]),
        TensorDataset(xs[va], y[va]),
        TensorDataset(xs[te], y[te]),
        prep,
        digest,
        labels or [],
        source,
    )


def digits(*, normalise: bool = True) -> TaskData:
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    return image_data(
        pixels, torch.tensor(d.target), [str(i) for i in range(10)], "sklearn digits", normalise=normalise
    )


def digits_classes(classes: tuple[int, ...], per_class: int | None = None) -> TaskData:
    """The digits of ``classes`` only (labels renumbered 0..K-1), split as ``digits()`` splits all of
    them, so a model pretrained on other classes never saw these test images. ``per_class`` keeps
    that many training images of each class (a small labelled set, where transfer pays off)."""
    full = digits()
    keep = torch.tensor(classes)

    def subset(split: TensorDataset, limit: int | None) -> TensorDataset:
        x, y = split.tensors
        rows = [torch.nonzero(y == c).flatten()[:limit] for c in classes]
        idx = torch.cat(rows).sort().values
        return TensorDataset(x[idx], torch.searchsorted(keep, y[idx]))

    return TaskData(
        "classification",
        "image",
        subset(full.train, per_class),
        subset(full.val, None),
        subset(full.test, None),
        full.preprocessing,
        fingerprint(full.fingerprint, str(classes), str(per_class)),
        [str(c) for c in classes],
        f"sklearn digits {', '.join(map(str, classes))}" + (f", {per_class} per class" if per_class else ""),
    )


def breast_cancer() -> TaskData:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return tabular_data(
        torch.tensor(d.data, dtype=torch.float32),
        torch.tensor(d.target),
        [str(f) for f in d.feature_names],
        labels=[str(n) for n in d.target_names],
        source="sklearn breast_cancer",
    )


def diabetes() -> TaskData:
    from sklearn.datasets import load_diabetes

    d = load_diabetes(scaled=False)  # raw units (age in years, bmi, ...): what a client would send
    return tabular_data(
        torch.tensor(d.data, dtype=torch.float32),
        torch.tensor(d.target, dtype=torch.float32),
        [str(f) for f in d.feature_names],
        targets=["disease_progression"],
        source="sklearn diabetes",
    )


def topics_text() -> dict[str, bytes]:
    """Python's bundled reference topics (``pydoc_data.topics``), UTF-8 encoded, by topic name."""
    from pydoc_data.topics import topics

    return {name: text.encode("utf-8") for name, text in sorted(topics.items())}


def windows(ids: Tensor, length: int, stride: int) -> Tensor:
    """(N, length) windows of a 1-D id tensor."""
    if len(ids) < length:
        return ids.new_zeros((0, length))
    return ids.unfold(0, length, stride).contiguous()


def as_ids(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
