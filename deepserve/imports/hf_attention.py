"""Attention over a Hugging Face causal LM's past and new columns kept apart, so that its exported
step never copies the KV cache (the zoo GPT's ``attend_cached``, for transformers' own models).

transformers joins past and new keys inside the cache object (``torch.cat`` per layer) and attends
over the result; exported, that is a copy of the whole cache per layer per decode step, plus a
transpose of it, which at batch 16 costs more than the model's own matmuls. Here:

- ``SplitCache`` holds each layer's past (B, Hkv, P, Dh) as given; its ``update`` records the new
  columns (B, Hkv, T, Dh) and hands only them to the attention, so nothing is concatenated;
- ``split_attention``, registered with transformers' ``AttentionInterface`` and set on the model,
  computes ``softmax([q·pastᵀ, q·newᵀ] + mask) · [past; new]`` as two matmuls each, the query heads
  of a grouped-query model reshaped onto their key/value head (no ``repeat_kv`` copy of the cache).
  The mask is transformers' own (its eager mask: causal, padding, sliding window).

Outside a ``SplitCache`` forward (transformers' full forward, a stacked-cache step) the function is
transformers' SDPA attention, unchanged. A model whose attention does not go through the interface,
or uses what this function does not implement (attention sinks), is caught (``new_columns`` or the
function raises SplitAttentionError), and the importer exports transformers' attention instead.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch

NAME = "deepserve_split"  # the attention implementation's name in transformers' registries
_ACTIVE: contextvars.ContextVar[SplitCache | None] = contextvars.ContextVar("deepserve_split", default=None)


class SplitAttentionError(RuntimeError):
    """The model's attention cannot run split; export it with transformers' own attention."""


def enable(lm: Any) -> bool:
    """Register the split attention and set it on ``lm``; False when the model refuses it (its
    attention does not follow transformers' AttentionInterface)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(NAME, split_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)  # a float mask, always materialised
    try:
        lm.set_attn_implementation(NAME)
    except (ValueError, NotImplementedError):
        return False
    return bool(lm.config._attn_implementation == NAME)


def _past_cache(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A transformers cache over the pasts (B, Hkv, P, Dh) per layer, never copied."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class PastLayer(DynamicLayer):  # type: ignore[no-untyped-call]
        def __init__(self, key: torch.Tensor, value: torch.Tensor) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            self.keys, self.values, self.device, self.is_initialized = key, value, key.device, True
            self.past_length = key.shape[-2]  # P: symbolic in export, so never int() it
            self.new: tuple[torch.Tensor, torch.Tensor] | None = None  # set by update
            self.attended = False  # set by split_attention

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> Any:
            self.new = (key_states, value_states)  # (B, Hkv, T, Dh)
            return key_states, value_states

        def get_seq_length(self) -> int:
            return self.past_length  # also when 0: no data-dependent test of numel

    cache = DynamicCache()
    cache.layers = [PastLayer(k, v) for k, v in layers]
    return cache


class SplitCache:
    """The state of one split forward: the cache given to transformers, active while it runs."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.cache = _past_cache(layers)

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        token = _ACTIVE.set(self)
        try:
            yield self.cache
        finally:
            _ACTIVE.reset(token)

    def new_columns(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every layer's new keys and values (B, Hkv, T, Dh); raises SplitAttentionError unless every
        layer's attention ran split (a model that bypassed the interface attended to the new columns only)."""
        layers = self.cache.layers
        if not all(layer.attended and layer.new is not None for layer in layers):
            raise SplitAttentionError("the model's attention bypasses transformers' AttentionInterface")
        return [layer.new[0] for layer in layers], [layer.new[1] for layer in layers]


def split_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (B, Hq, T, Dh)
    key: torch.Tensor,  # (B, Hkv, T, Dh): the new columns only, inside a SplitCache forward
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,  # (B, 1, T, >= P+T) additive
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; -> (B, T, Hq, Dh), no weights."""
    state = _ACTIVE.get()
    if state is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, softcap=softcap, **kwargs)  # fmt: skip
    if kwargs.get("s_aux") is not None:
        raise SplitAttentionError("attention sinks (s_aux) are not implemented by the split attention")
    index = getattr(module, "layer_idx", None)
    if index is None:
        raise SplitAttentionError(f"{type(module).__name__} does not say which layer it is (no layer_idx)")
    layer = state.cache.layers[int(index)]
    past_key, past_value = layer.keys, layer.values  # (B, Hkv, P, Dh)
    B, Hq, T, Dh = query.shape
    Hkv, P = past_key.shape[1], past_key.shape[2]
    q = (query * (Dh**-0.5 if scaling is None else scaling)).reshape(B, Hkv, (Hq // Hkv) * T, Dh)
    # (B, Hkv, g*T, P+T): g query heads share each key/value head
    scores = torch.cat([q @ past_key.transpose(-2, -1), q @ key.transpose(-2, -1)], dim=-1)
    scores = scores.view(B, Hq, T, P + T)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[..., : P + T]
    att = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype).view(B, Hkv, (Hq // Hkv) * T, P + T)
    y = att[..., :P] @ past_value + att[..., P:] @ value  # (B, Hkv, g*T, Dh)
    layer.attended = True
    return y.view(B, Hq, T, Dh).transpose(1, 2).contiguous(), None
