"""The KV cache for the concat contract (``kv_contract.py``): one shared, left-padded cache.

Layout ``(L, B, H, W, Dh)``: row i's tokens fill its last ``len_i`` columns, so every decode step
appends one column to all rows and the graph's ``present`` becomes the next step's ``past`` (the
graph itself copies the cache into ``present``: that is the contract's cost); ``mask`` (B, W)
hides the padding. Rows join (padding the narrower side) and leave (trimming the width to the
longest row left). Same interface as ``slot_cache.SlotCache``, which the in-place contract uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# step(ids, positions, mask, past_key, past_value) -> (logits, present_key, present_value)
ConcatStep = Callable[
    [np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]
]


@dataclass(eq=False)
class ConcatPrefill:
    """One prompt being prefilled: its own cache (L, 1, H, p, Dh) until it joins."""

    key: np.ndarray
    value: np.ndarray

    @property
    def length(self) -> int:
        return int(self.key.shape[3])


class BatchCache:
    """The shared left-padded KV cache of the running rows (layout in the module docstring)."""

    def __init__(self, step: ConcatStep, geometry: tuple[int, int, int]) -> None:
        self._step, self._geometry = step, geometry
        self.key: np.ndarray | None = None  # (L, B, H, W, Dh)
        self.value: np.ndarray | None = None
        self.mask = np.zeros((0, 0), np.int64)  # (B, W), 1 = real token
        self.lengths = np.zeros(0, np.int64)  # (B,) tokens per row

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    def begin(self, prompt_length: int) -> ConcatPrefill:
        layers, heads, head_dim = self._geometry
        empty = np.zeros((layers, 1, heads, 0, head_dim), np.float32)
        return ConcatPrefill(empty, empty)

    def prefill(self, pre: ConcatPrefill, tokens: list[int]) -> np.ndarray:
        """Run the next ``tokens`` of ``pre``'s prompt; the logits of its last position (V,)."""
        start, t = pre.length, len(tokens)
        positions = np.arange(start, start + t, dtype=np.int64)[None]
        mask = np.ones((1, start + t), np.int64)
        logits, pre.key, pre.value = self._step(
            np.array([tokens], np.int64), positions, mask, pre.key, pre.value
        )
        last: np.ndarray = logits[0, -1]  # (V,) the next-token logits after the chunk
        return last

    def join(self, pre: ConcatPrefill, copies: int) -> None:
        self.add(pre.key, pre.value, copies)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """One new token per running row (B,); the next-token logits (B, V)."""
        assert self.key is not None and self.value is not None
        mask = self.decode_mask()
        ids = np.ascontiguousarray(tokens.reshape(-1, 1), np.int64)
        logits, key, value = self._step(ids, self.lengths[:, None].copy(), mask, self.key, self.value)
        self.advance(key, value, mask)
        return logits[:, -1]

    @property
    def nbytes(self) -> int:
        return 0 if self.key is None or self.value is None else self.key.nbytes + self.value.nbytes

    def add(self, key: np.ndarray, value: np.ndarray, copies: int) -> None:
        """Append ``copies`` rows holding one prefilled prompt's cache (L, 1, H, p, Dh)."""
        key, value = np.repeat(key, copies, axis=1), np.repeat(value, copies, axis=1)
        mask = np.ones((copies, key.shape[3]), np.int64)
        self.lengths = np.concatenate([self.lengths, np.full(copies, key.shape[3], np.int64)])
        if self.key is None or self.value is None:
            self.key, self.value, self.mask = key, value, mask
            return
        width = max(self.key.shape[3], key.shape[3])
        self.key = np.concatenate([_left_pad(self.key, width), _left_pad(key, width)], axis=1)
        self.value = np.concatenate([_left_pad(self.value, width), _left_pad(value, width)], axis=1)
        self.mask = np.concatenate([_left_pad_mask(self.mask, width), _left_pad_mask(mask, width)], axis=0)

    def decode_mask(self) -> np.ndarray:
        return np.concatenate([self.mask, np.ones((self.mask.shape[0], 1), np.int64)], axis=1)  # (B, W+1)

    def advance(self, key: np.ndarray, value: np.ndarray, mask: np.ndarray) -> None:
        self.key, self.value, self.mask = key, value, mask
        self.lengths = self.lengths + 1

    def keep(self, rows: list[int]) -> list[int]:
        """Keep only ``rows`` (in order) and trim the width to the longest of them; returns ``rows``
        (the new row order, as ``SlotCache.keep`` does)."""
        if not rows or self.key is None or self.value is None:
            self.key = self.value = None
            self.mask, self.lengths = np.zeros((0, 0), np.int64), np.zeros(0, np.int64)
            return []
        self.lengths = self.lengths[rows]
        mask = self.mask[rows]
        start = self.mask.shape[1] - int(mask.sum(axis=1).max())
        self.key = np.ascontiguousarray(self.key[:, rows, :, start:])
        self.value = np.ascontiguousarray(self.value[:, rows, :, start:])
        self.mask = np.ascontiguousarray(mask[:, start:])
        return rows


def _left_pad(cache: np.ndarray, width: int) -> np.ndarray:
    pad = width - cache.shape[3]
    return cache if pad == 0 else np.pad(cache, ((0, 0), (0, 0), (0, 0), (pad, 0), (0, 0)))


def _left_pad_mask(mask: np.ndarray, width: int) -> np.ndarray:
    pad = width - mask.shape[1]
    return mask if pad == 0 else np.pad(mask, ((0, 0), (pad, 0)))
