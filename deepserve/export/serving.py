"""Serving modules: a zoo model wrapped with model_store/README.md's graph I/O, input arithmetic inside.

What a client sends over KServe v2 is what a handler decodes from a PNG or a row: pixels in
[0, 1], features in raw units (category indexes in one-hot columns), token ids. The wrappers here
apply the training-time normalisation inside the graph (tabular features through training's own
``TabularTransform``: the scaler, then one-hot), de-scale regression targets, and map generator
outputs to [0, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from deepserve.training.features import TabularTransform


def _stat(values: list[float], shape: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(shape)


class ImageModel(nn.Module):
    """pixels (B, C, H, W) in [0, 1] -> the model's output (logits, latent mean); normalisation inside."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", _stat(mean, (1, -1, 1, 1)))
        self.register_buffer("std", _stat(std, (1, -1, 1, 1)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels - self.mean) / self.std)  # (B, K) or (B, Z)


class TabularModel(nn.Module):
    """features (B, F) in raw units -> logits (B, K), or predictions (B, T) in target units.

    ``mean`` / ``std`` are the scaler's center and scale; ``categorical`` maps a column index to its
    number of categories (one-hot inside the graph).
    """

    def __init__(
        self,
        model: nn.Module,
        mean: list[float],
        std: list[float],
        target_mean: list[float] | None = None,
        target_std: list[float] | None = None,
        categorical: dict[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.transform = TabularTransform(mean, std, categorical)
        self.register_buffer("target_mean", _stat(target_mean or [0.0], (1, -1)))
        self.register_buffer("target_std", _stat(target_std or [1.0], (1, -1)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.model(self.transform(features))  # (B, K) or (B, T) standardised
        return out * self.target_std + self.target_mean


class TextClassifier(nn.Module):
    """(input_ids, attention_mask) (B, T) int64 -> logits (B, K)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)


class TextEmbedder(nn.Module):
    """(input_ids, attention_mask) -> L2-normalised sentence embedding (B, D) via the model's ``embed``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.model.embed(input_ids, attention_mask)  # type: ignore[operator]
        return nn.functional.normalize(pooled, p=2.0, dim=1)  # (B, D)


class ImageOutput(nn.Module):
    """latent (B, Z) -> images (B, C, H, W) in [0, 1], whatever range the generator emits.

    ``scale``/``shift`` map the generator's output range to pixels: tanh (-1..1) -> (x + 1) / 2;
    a decoder emitting normalised pixels -> x * std + mean.
    """

    def __init__(self, generate: nn.Module, scale: list[float], shift: list[float]) -> None:
        super().__init__()
        self.generate = generate
        self.register_buffer("scale", _stat(scale, (1, -1, 1, 1)))
        self.register_buffer("shift", _stat(shift, (1, -1, 1, 1)))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        images = self.generate(latent)  # (B, C, H, W)
        return (images * self.scale + self.shift).clamp(0.0, 1.0)
