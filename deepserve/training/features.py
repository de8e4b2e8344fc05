"""Tabular feature preprocessing (the guide's chapter on data): scaling and one-hot encoding.

Scalers are affine, ``(x - center) / scale`` per column, fitted on the training split only:

    standard   center = mean,    scale = standard deviation
    minmax     center = minimum, scale = maximum - minimum   (train rows land in [0, 1])
    robust     center = median,  scale = interquartile range (outliers barely move it)
    none       center = 0,       scale = 1

A categorical column holds category codes (the index into its sorted categories); one-hot turns
it into K 0/1 columns. ``TabularTransform`` is the one implementation: training builds its
tensors with it and export puts the same module in front of the model, so the served graph
applies exactly the training-time arithmetic to raw rows (model.json's ``mean`` / ``std`` are
the scaler's center / scale; categorical columns have center 0 and scale 1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SCALERS = ("standard", "minmax", "robust", "none")


def scaler_stats(x: Tensor, scaler: str) -> tuple[Tensor, Tensor]:
    """(center, scale) per column of ``x`` (N, F); a constant column keeps scale 1."""
    if scaler == "standard":
        center, scale = x.mean(0), x.std(0)
    elif scaler == "minmax":
        low = x.amin(0)
        center, scale = low, x.amax(0) - low
    elif scaler == "robust":
        q = torch.quantile(x.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), dim=0).float()
        center, scale = q[1], q[2] - q[0]
    elif scaler == "none":
        center, scale = torch.zeros(x.shape[1]), torch.ones(x.shape[1])
    else:
        raise ValueError(f"unknown scaler {scaler!r}; choose one of {', '.join(SCALERS)}")
    scale = torch.where(scale.abs() > 1e-8, scale, torch.ones_like(scale))
    return center.float(), scale.float()


class TabularTransform(nn.Module):
    """features (B, F) raw -> model input (B, F'): scaled numeric columns, then one-hot blocks.

    ``categorical`` maps a column index to its number of categories; a code outside 0..K-1 (a
    category training never saw) becomes all zeros.
    """

    center: Tensor  # (1, F) buffers
    scale: Tensor
    numeric: Tensor  # (F_num,) column indexes
    code_columns: Tensor  # (sum K,) each categorical column's index, once per category
    codes: Tensor  # (1, sum K) the category index each one-hot column stands for

    def __init__(self, center: list[float], scale: list[float], categorical: dict[int, int] | None = None):
        super().__init__()
        categorical = dict(sorted((categorical or {}).items()))
        width = len(center)
        numeric = [i for i in range(width) if i not in categorical]
        self.register_buffer("center", torch.tensor(center, dtype=torch.float32)[None, :])
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32)[None, :])
        self.register_buffer("numeric", torch.tensor(numeric, dtype=torch.long))
        repeated = [i for i, k in categorical.items() for _ in range(k)]
        codes = [float(c) for k in categorical.values() for c in range(k)]
        self.register_buffer("code_columns", torch.tensor(repeated, dtype=torch.long))
        self.register_buffer("codes", torch.tensor(codes, dtype=torch.float32)[None, :])
        self.one_hot = bool(categorical)
        self.out_features = len(numeric) + len(codes)

    def forward(self, features: Tensor) -> Tensor:
        scaled = (features - self.center) / self.scale  # (B, F)
        if not self.one_hot:
            return scaled
        numeric = scaled.index_select(1, self.numeric)  # (B, F_num)
        hot = (features.index_select(1, self.code_columns) == self.codes).to(features.dtype)  # (B, sum K)
        return torch.cat([numeric, hot], dim=1)


def categorical_columns(features: list[str], categories: dict[str, list[str]]) -> dict[int, int]:
    """Column index -> number of categories, for the columns ``categories`` names."""
    return {features.index(name): len(values) for name, values in categories.items()}
