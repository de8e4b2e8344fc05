"""The two explicit-KV-cache step contracts a text-generation graph can have.

Both take ``input_ids``, ``position_ids`` (B, T) and ``attention_mask`` (B, P+T) and return
``logits`` (B, T, V); they differ in how the cache goes in and comes out:

- **in-place** (the zoo GPT, imported Hugging Face causal LMs): ``past_key_0 .. past_key_{L-1},
  past_value_0 .. past_value_{L-1}``,
  one (B, H, P, Dh) input per layer, and ``new_key``, ``new_value`` (L, B, H, T, Dh): the new columns
  only. The caller owns the cache and writes those columns into it; per-layer inputs let it pass
  views of its own buffers, so no step copies the cache (``slot_cache.py``).
- **concat** (stores exported before the in-place contract, Hugging Face imports included):
  ``past_key``, ``past_value`` (L, B, H, P, Dh) and ``present_key``, ``present_value``
  (L, B, H, P+T, Dh): past and new joined inside the graph, one copy of the cache per step
  (``concat_cache.py``).

``host_step`` runs either over a cache kept whole on the host: the reference the export checks
and tests use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from deepserve.handlers.base import ModelLoadError

IN_PLACE, CONCAT = "in-place", "concat"
TOKEN_INPUTS = ("input_ids", "position_ids", "attention_mask")
Step = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class KVCache(Protocol):
    """What the generation engine needs of a cache: prompts prefilled (in chunks) in their own
    space, joined as decode rows, one token per row per decode, rows kept or dropped."""

    @property
    def rows(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def begin(self, prompt_length: int) -> Any: ...
    def prefill(self, pre: Any, tokens: list[int]) -> np.ndarray: ...
    def join(self, pre: Any, copies: int) -> None: ...
    def decode(self, tokens: np.ndarray) -> np.ndarray: ...
    def keep(self, alive: list[int]) -> list[int]: ...


def past_names(n_layer: int) -> list[str]:
    """The in-place contract's cache inputs: every layer's key, then every layer's value."""
    return [f"past_key_{i}" for i in range(n_layer)] + [f"past_value_{i}" for i in range(n_layer)]


def contract_of(input_names: Sequence[str], model: str = "the model") -> str:
    """Which contract a step graph follows, from its input names."""
    if "past_key_0" in input_names:
        return IN_PLACE
    if "past_key" in input_names:
        return CONCAT
    raise ModelLoadError(
        f"{model}: the graph has no KV-cache inputs (past_key_0.. or past_key); inputs are "
        f"{list(input_names)}; re-export it as a text-generation step graph"
    )


def host_step(
    step: Step,
    contract: str,
    ids: np.ndarray,
    positions: np.ndarray,
    mask: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step with the whole cache on the host, (L, B, H, P, Dh) in and (L, B, H, P+T, Dh) out,
    whichever contract ``step`` follows."""
    feeds = {"input_ids": ids, "position_ids": positions, "attention_mask": mask}
    if contract == CONCAT:
        out = step(feeds | {"past_key": key, "past_value": value})
        return out["logits"], out["present_key"], out["present_value"]
    layers = key.shape[0]
    pasts = [np.ascontiguousarray(key[i]) for i in range(layers)] + [
        np.ascontiguousarray(value[i]) for i in range(layers)
    ]
    out = step(feeds | dict(zip(past_names(layers), pasts, strict=True)))
    return (
        out["logits"],
        np.concatenate([key, out["new_key"]], axis=3),
        np.concatenate([value, out["new_value"]], axis=3),
    )
