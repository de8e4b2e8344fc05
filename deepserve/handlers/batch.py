"""Items from several requests -> one batch and back: pad dim 1 where lengths differ, concatenate, split.

Text items are padded to the longest sequence in the batch with the model's ``pad_id`` (and
attention mask 0), which the graphs ignore, so padding never changes an item's result.
"""

from __future__ import annotations

import numpy as np

from deepserve.handlers.base import Tensors


def pad_to(array: np.ndarray, width: int, value: int) -> np.ndarray:
    """Pad dim 1 of ``array`` (n, T, ...) to ``width`` with ``value``."""
    if array.shape[1] == width:
        return array
    pad = [(0, 0)] * array.ndim
    pad[1] = (0, width - array.shape[1])
    return np.pad(array, pad, constant_values=value)


def concat_items(items: list[Tensors], pad_values: dict[str, int]) -> Tensors:
    if len(items) == 1:
        return items[0]
    names = list(items[0])
    for item in items[1:]:
        if list(item) != names:
            raise ValueError(f"items carry different inputs: {names} vs {list(item)}")
    batch: Tensors = {}
    for name in names:
        arrays = [item[name] for item in items]
        if name in pad_values and arrays[0].ndim >= 2:
            width = max(a.shape[1] for a in arrays)
            arrays = [pad_to(a, width, pad_values[name]) for a in arrays]
        batch[name] = np.concatenate(arrays, axis=0)
    return batch


def split_rows(outputs: Tensors, rows: list[int]) -> list[Tensors]:
    """Cut every output along the batch dimension into pieces of ``rows`` rows."""
    if len(rows) == 1:
        return [outputs]
    bounds = [0]
    for n in rows:
        bounds.append(bounds[-1] + n)
    return [{name: out[bounds[i] : bounds[i + 1]] for name, out in outputs.items()} for i in range(len(rows))]
