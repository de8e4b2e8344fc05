"""Vision Transformer (guide ch. 14): conv patch embedding, CLS token, learned position
embeddings, pre-norm transformer blocks, classifier on the CLS state. ``grad_checkpoint``
recomputes each block in backward (training only; export is unaffected)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from deepserve.models import register_model
from deepserve.models.transformer import MultiHeadSelfAttention


@dataclass
class ViTConfig:
    image_size: int = 8
    patch_size: int = 2
    in_channels: int = 1
    num_classes: int = 10
    d_model: int = 64
    n_head: int = 4
    n_layer: int = 4
    d_ff: int = 128
    dropout: float = 0.1
    grad_checkpoint: bool = False  # recompute each block in backward (training only)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch {self.patch_size}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")


class PreNormBlock(nn.Module):
    """x = x + MHA(LN(x)); x = x + MLP(LN(x))."""

    def __init__(self, d_model: int, n_head: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadSelfAttention(d_model, n_head, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(d_ff, d_model), nn.Dropout(dropout),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))  # (B, N+1, C)


class ViT(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        num_patches = (c.image_size // c.patch_size) ** 2
        # A conv with kernel = stride = patch is "flatten each patch, then Linear" in one op.
        self.patch_embed = nn.Conv2d(c.in_channels, c.d_model, c.patch_size, c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.d_model))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, c.d_model) * 0.02)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.Sequential(
            *(PreNormBlock(c.d_model, c.n_head, c.d_ff, c.dropout) for _ in range(c.n_layer))
        )
        self.norm = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        torch._assert(x.dim() == 4, "ViT expects images of shape (B, C, H, W)")
        torch._assert(x.shape[1] == c.in_channels, "ViT: wrong number of image channels")
        torch._assert(x.shape[2] == c.image_size and x.shape[3] == c.image_size, "ViT: wrong image size")
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, C)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, C)
        x = self.drop(torch.cat([cls, x], dim=1) + self.pos_embed)  # (B, N+1, C)
        if self.config.grad_checkpoint and self.training and torch.is_grad_enabled():
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        x = self.norm(x)
        return self.head(x[:, 0])  # CLS state -> (B, K)


@register_model("vit")
def vit(**config: object) -> ViT:
    return ViT(ViTConfig(**config))  # type: ignore[arg-type]
