"""Transformer encoder for text (guide ch. 11): multi-head self-attention, sinusoidal positions,
a padding mask from ``attention_mask``, a classifier head and masked mean pooling for embeddings.

Attention is written out with ``F.scaled_dot_product_attention`` and an additive mask instead of
``nn.TransformerEncoder``, whose fast path (nested tensors) breaks tracing and export.
Padded positions never influence real ones: positions are counted over real tokens (so left
and right padding give the same result) and padded keys get a -1e4 bias (exp underflows to exactly
0 in fp32, and the constant stays finite in fp16, so fully padded rows give no NaN).

``grad_checkpoint`` recomputes each block's activations in backward instead of keeping them
(``torch.utils.checkpoint``): less memory for more compute, in training only, so exported graphs
are the same with it on or off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from deepserve.models import register_model

MASK_BIAS = -1.0e4  # additive bias for keys that must not be attended to


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) int mask, 1 = token -> (B, 1, 1, T) additive attention bias."""
    return ((1 - attention_mask).to(dtype) * MASK_BIAS)[:, None, None, :]


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)  # W_Q, W_K, W_V in one matmul
        self.proj = nn.Linear(d_model, d_model)  # W_O
        self.dropout = dropout

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        heads = (B, T, self.n_head, C // self.n_head)
        q, k, v = (t.view(heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, Dh)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)  # (B, H, T, Dh)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class EncoderBlock(nn.Module):
    """Post-norm block as in the guide: x = LN(x + MHA(x)); x = LN(x + FFN(x))."""

    def __init__(self, d_model: int, n_head: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.attn = MultiHeadSelfAttention(d_model, n_head, dropout)
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x, bias)))
        return self.norm2(x + self.drop(self.ffn(x)))  # (B, T, C)


def sinusoidal_table(max_len: int, d_model: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)  -> (max_len, d_model)."""
    position = torch.arange(max_len, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)[:, : d_model // 2]
    return pe


@dataclass
class TransformerConfig:
    vocab_size: int = 256
    d_model: int = 128
    n_head: int = 4
    n_layer: int = 2
    d_ff: int = 256
    max_len: int = 512
    dropout: float = 0.1
    num_classes: int = 2
    pad_id: int = 0
    pooling: str = "mean"  # "mean": masked mean over real tokens; "first": token 0 (needs right padding)
    grad_checkpoint: bool = False  # recompute each block in backward (training only)

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "first"):
            raise ValueError(f"TransformerConfig.pooling must be 'mean' or 'first', got {self.pooling!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")


def masked_mean(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, C), (B, T) -> (B, C): mean over real tokens only (an all-padding row gives zeros)."""
    m = attention_mask.to(x.dtype)[:, :, None]  # (B, T, 1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class TransformerEncoder(nn.Module):
    pe: torch.Tensor  # (max_len, d_model) sinusoidal table, a non-persistent buffer

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embedding = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_id)
        self.register_buffer("pe", sinusoidal_table(c.max_len, c.d_model), persistent=False)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            EncoderBlock(c.d_model, c.n_head, c.d_ff, c.dropout) for _ in range(c.n_layer)
        )
        self.head = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.d_model, c.num_classes))

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states (B, T, d_model)."""
        torch._assert(input_ids.dim() == 2, "input_ids must be (B, T)")
        torch._assert(attention_mask.dim() == 2, "attention_mask must be (B, T)")
        torch._assert(input_ids.shape[1] <= self.config.max_len, "sequence longer than config.max_len")
        # positions count real tokens only, so left padding does not shift them
        positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        x = self.embedding(input_ids) * math.sqrt(self.config.d_model) + self.pe[positions]  # (B, T, C)
        x = self.drop(x)
        bias = padding_bias(attention_mask, x.dtype)  # (B, 1, 1, T)
        recompute = self.config.grad_checkpoint and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, bias, use_reentrant=False) if recompute else block(x, bias)
        return x

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sentence embedding: masked mean of the token states -> (B, d_model)."""
        return masked_mean(self.encode(input_ids, attention_mask), attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.encode(input_ids, attention_mask)  # (B, T, C)
        pooled = masked_mean(x, attention_mask) if self.config.pooling == "mean" else x[:, 0]
        return self.head(pooled)  # (B, K)


@register_model("transformer")
def transformer(**config: object) -> TransformerEncoder:
    return TransformerEncoder(TransformerConfig(**config))  # type: ignore[arg-type]
