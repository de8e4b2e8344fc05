"""Decoder-only causal language model (guide ch. 22, nanoGPT layout) with an explicit KV cache.

Two entry points share every weight:
- ``forward(input_ids)`` -> logits (B, T, V): training / full recompute, causal attention.
- ``forward_cached(input_ids, position_ids, attention_mask, past)`` -> (logits, new_key, new_value):
  one graph for prefill (P = 0) and decode (T = 1 or more). The new T tokens attend causally among
  themselves and to the P past columns; ``attention_mask`` (B, P+T), 1 = real token, hides padding
  and unused cache columns anywhere, so sequences of different lengths share one batch.
  ``past`` is 2 x n_layer tensors (B, n_head, P, head_dim), all layers' keys then all values, one
  input per layer so a server can pass views of its own cache buffers without a copy. The step
  returns only the NEW keys and values (n_layer, B, n_head, T, head_dim): the caller writes them
  into its cache in place; the graph never copies the cache (the "in-place" contract of
  model_store/README.md). ``GPTWithCache`` exposes it as ``forward`` for export. No generation
  loop lives here.
``grad_checkpoint`` recomputes each block in backward during training (``forward`` only; the
cached path is inference), trading compute for activation memory; export is unaffected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from deepserve.models import register_model

MASK_BIAS = -1.0e4  # additive bias for hidden keys: exp underflows to exactly 0, finite in fp16


@dataclass
class GPTConfig:
    vocab_size: int = 256
    context_length: int = 256
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    dropout: float = 0.0
    bias: bool = True
    grad_checkpoint: bool = False  # recompute each block in backward (training only)

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")


class CausalSelfAttention(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.n_head = c.n_head
        self.c_attn = nn.Linear(c.d_model, 3 * c.d_model, bias=c.bias)
        self.c_proj = nn.Linear(c.d_model, c.d_model, bias=c.bias)
        self.dropout = c.dropout
        self.resid_drop = nn.Dropout(c.dropout)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        heads = (B, T, self.n_head, C // self.n_head)
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        return q.view(heads).transpose(1, 2), k.view(heads).transpose(1, 2), v.view(heads).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Plain causal attention over the T tokens themselves (training / full recompute)."""
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, H, T, Dh)
        return self.merge(y)

    def attend_cached(
        self,
        q: torch.Tensor,  # (B, H, T, Dh), new tokens
        k: torch.Tensor,  # (B, H, T, Dh)
        v: torch.Tensor,  # (B, H, T, Dh)
        past: tuple[torch.Tensor, torch.Tensor],  # (B, H, P, Dh) x 2
        bias: torch.Tensor,  # (B, 1, T, P+T)
    ) -> torch.Tensor:
        """Attention over past + new keys with plain matmuls, past and new kept apart.

        Why not SDPA on ``cat(past, new)``: exported, SDPA scales and transposes the whole key
        cache and the cat copies it, every layer of every decode step; here only ``q`` (T rows)
        is scaled, ``q @ pastᵀ`` fuses into one matmul (ORT FusedMatMul), and the cache is only
        read: the step returns the new columns and the server writes them in place.
        """
        P = past[0].shape[2]
        q = q * (1.0 / math.sqrt(q.shape[-1]))
        scores = torch.cat([q @ past[0].transpose(-2, -1), q @ k.transpose(-2, -1)], dim=-1)  # (B, H, T, P+T)
        att = (scores + bias).softmax(dim=-1)
        y = att[..., :P] @ past[1] + att[..., P:] @ v  # (B, H, T, Dh)
        return self.merge(y)

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, H, T, Dh) heads -> (B, T, C) through the output projection."""
        B, H, T, Dh = y.shape
        return self.resid_drop(self.c_proj(y.transpose(1, 2).reshape(B, T, H * Dh)))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.d_model, bias=c.bias)
        self.attn = CausalSelfAttention(c)
        self.ln_2 = nn.LayerNorm(c.d_model, bias=c.bias)
        self.mlp = nn.Sequential(
            nn.Linear(c.d_model, 4 * c.d_model, bias=c.bias), nn.GELU(),
            nn.Linear(4 * c.d_model, c.d_model, bias=c.bias), nn.Dropout(c.dropout),
        )

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        past: tuple[torch.Tensor, torch.Tensor] | None = None,  # (B, H, P, Dh) x 2
        bias: torch.Tensor | None = None,  # (B, 1, T, P+T); needed with past
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (B, T, C) and this block's NEW keys and values (B, H, T, Dh); the caller appends them."""
        q, k, v = self.attn.qkv(self.ln_1(x))  # (B, H, T, Dh)
        if past is None:
            x = x + self.attn.attend(q, k, v)  # training / full recompute: plain causal
        else:
            torch._assert(bias is not None, "a cached step needs the attention bias")
            x = x + self.attn.attend_cached(q, k, v, past, bias)  # type: ignore[arg-type]
        return x + self.mlp(self.ln_2(x)), k, v


def cache_bias(attention_mask: torch.Tensor, past_len: int, T: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, P+T) mask -> (B, 1, T, P+T) additive bias: causal over the new tokens, padding hidden."""
    S = attention_mask.shape[1]
    key_pos = torch.arange(S, device=attention_mask.device)[None, :]  # (1, S)
    query_pos = torch.arange(T, device=attention_mask.device)[:, None] + past_len  # (T, 1)
    allowed = (key_pos <= query_pos)[None] & (attention_mask[:, None, :] == 1)  # (B, T, S)
    return torch.where(allowed, 0.0, MASK_BIAS).to(dtype)[:, None]  # (B, 1, T, S)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.wte = nn.Embedding(c.vocab_size, c.d_model)
        self.wpe = nn.Embedding(c.context_length, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.h = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.d_model, bias=c.bias)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input/output embeddings
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        torch._assert(input_ids.dim() == 2, "input_ids must be (B, T)")
        T = input_ids.shape[1]
        torch._assert(input_ids.shape[1] <= self.config.context_length, "sequence longer than context_length")
        pos = torch.arange(T, device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))  # (B, T, C)
        recompute = self.config.grad_checkpoint and self.training and torch.is_grad_enabled()
        for block in self.h:
            x = checkpoint(block, x, use_reentrant=False)[0] if recompute else block(x)[0]
        return self.lm_head(self.ln_f(x))  # (B, T, V)

    def forward_cached(
        self,
        input_ids: torch.Tensor,  # (B, T) int64
        position_ids: torch.Tensor,  # (B, T) int64, any valid position (e.g. 0) at padded slots
        attention_mask: torch.Tensor,  # (B, P+T) int64, 1 = attend
        past: tuple[torch.Tensor, ...] | list[torch.Tensor],  # 2L x (B, H, P, Dh): keys, then values
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        torch._assert(input_ids.dim() == 2 and position_ids.dim() == 2, "ids/positions must be (B, T)")
        L = len(self.h)
        torch._assert(len(past) == 2 * L, "past must be n_layer keys then n_layer values")
        T, P = input_ids.shape[1], past[0].shape[2]
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))  # (B, T, C)
        bias = cache_bias(attention_mask, P, T, x.dtype)  # (B, 1, T, P+T)
        keys, values = [], []
        for i, block in enumerate(self.h):
            x, k, v = block(x, (past[i], past[L + i]), bias)  # k, v: (B, H, T, Dh), new only
            keys.append(k)
            values.append(v)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return logits, torch.stack(keys), torch.stack(values)  # new columns only: (L, B, H, T, Dh)

    def empty_cache(self, batch_size: int) -> list[torch.Tensor]:
        """A zero-length past (P = 0) on this model's device and dtype, for the prefill step."""
        c = self.config
        w = self.wte.weight
        return [w.new_zeros(batch_size, c.n_head, 0, c.d_model // c.n_head) for _ in range(2 * c.n_layer)]


class GPTWithCache(nn.Module):
    """Wraps a GPT so that ``forward`` is ``forward_cached`` over flat inputs, in the export's order:
    ``input_ids, position_ids, attention_mask, past_key_0 .. past_key_{L-1}, past_value_0 ..``
    (one ``*inputs``: the number of cache inputs depends on the depth)."""

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        input_ids, position_ids, attention_mask, *past = inputs
        return self.gpt.forward_cached(input_ids, position_ids, attention_mask, past)


@register_model("gpt")
def gpt(**config: object) -> GPT:
    return GPT(GPTConfig(**config))  # type: ignore[arg-type]
