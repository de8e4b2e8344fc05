"""The shared, left-padded KV cache of the generation engine's running sequences.

Layout ``(L, B, H, W, Dh)``: row i's tokens fill its last ``len_i`` columns, so every decode step
appends one column to all rows and the graph's ``present`` becomes the next step's ``past`` with no
copy; ``mask`` (B, W) hides the padding. Rows join (padding the narrower side) and leave (trimming
the width to the longest row left), which are the only times the cache is copied.
"""

from __future__ import annotations

import numpy as np


class BatchCache:
    """The shared left-padded KV cache of the running rows (layout in the module docstring)."""

    def __init__(self) -> None:
        self.key: np.ndarray | None = None  # (L, B, H, W, Dh)
        self.value: np.ndarray | None = None
        self.mask = np.zeros((0, 0), np.int64)  # (B, W), 1 = real token

    @property
    def nbytes(self) -> int:
        return 0 if self.key is None or self.value is None else self.key.nbytes + self.value.nbytes

    def add(self, key: np.ndarray, value: np.ndarray, copies: int) -> None:
        """Append ``copies`` rows holding one prefilled prompt's cache (L, 1, H, p, Dh)."""
        key, value = np.repeat(key, copies, axis=1), np.repeat(value, copies, axis=1)
        mask = np.ones((copies, key.shape[3]), np.int64)
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

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in order) and trim the width to the longest of them."""
        if not rows or self.key is None or self.value is None:
            self.__init__()  # type: ignore[misc]  # back to empty
            return
        mask = self.mask[rows]
        start = self.mask.shape[1] - int(mask.sum(axis=1).max())
        self.key = np.ascontiguousarray(self.key[:, rows, :, start:])
        self.value = np.ascontiguousarray(self.value[:, rows, :, start:])
        self.mask = np.ascontiguousarray(mask[:, start:])


def _left_pad(cache: np.ndarray, width: int) -> np.ndarray:
    pad = width - cache.shape[3]
    return cache if pad == 0 else np.pad(cache, ((0, 0), (0, 0), (0, 0), (pad, 0), (0, 0)))


def _left_pad_mask(mask: np.ndarray, width: int) -> np.ndarray:
    pad = width - mask.shape[1]
    return mask if pad == 0 else np.pad(mask, ((0, 0), (pad, 0)))
