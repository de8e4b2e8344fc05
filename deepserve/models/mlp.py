"""Deep MLP for tabular data (guide ch. 8): [Linear -> BatchNorm1d -> ReLU -> Dropout] x N -> Linear.

Used for classification (out_features = classes, logits) and regression (out_features = targets).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepserve.models import register_model


@dataclass
class MLPConfig:
    in_features: int
    out_features: int
    hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.1
    batch_norm: bool = True

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)  # checkpoints may carry lists
        if self.in_features < 1 or self.out_features < 1 or any(h < 1 for h in self.hidden):
            raise ValueError(f"MLPConfig sizes must be positive, got {self}")


class MLP(nn.Module):
    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.in_features
        for hidden in config.hidden:
            layers.append(nn.Linear(width, hidden))
            if config.batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers += [nn.ReLU(), nn.Dropout(config.dropout)]
            width = hidden
        layers.append(nn.Linear(width, config.out_features))
        self.network = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.dim() == 2, "MLP expects features of shape (B, F)")
        torch._assert(x.shape[1] == self.config.in_features, "MLP: wrong number of input features")
        return self.network(x)  # (B, F) -> (B, out_features)


@register_model("mlp")
def mlp(**config: object) -> MLP:
    return MLP(MLPConfig(**config))  # type: ignore[arg-type]
