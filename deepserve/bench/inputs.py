"""Real inputs for a model's task, as KServe v2 tensors (batch dimension first).

Images are sklearn digits (scaled up, channel-repeated for larger models such as the 3x224x224
bench classifier), tabular rows come from the sklearn set whose width matches (breast cancer 30,
diabetes 10, digits 64), sentences are real mixed-length text from ``pydoc_data.topics`` (tokenized
with the model's own tokenizer), latents are N(0, I). An input nothing matches gets seeded random
values of its datatype, so every served signature can be driven.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepserve.bench.codec import Sample


@dataclass(frozen=True)
class InputSpec:
    name: str
    datatype: str
    shape: list[int]  # batch first, -1 dynamic


@dataclass
class ModelInfo:
    """What the bench needs to know about a served model (from model.json or server metadata)."""

    name: str
    task: str
    inputs: list[InputSpec]
    max_batch_size: int = 0
    preprocessing: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    version_dir: Path | None = None

    @property
    def is_generation(self) -> bool:
        return self.task == "text-generation"


NUMPY_DTYPES = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT64": np.int64,
    "INT32": np.int32,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}


def sentences(n: int, *, min_chars: int = 20, max_chars: int = 400) -> list[str]:
    """``n`` real English sentences of mixed length from the Python docs (cycled if needed)."""
    from pydoc_data.topics import topics

    found: list[str] = []
    for key in sorted(topics):
        for part in re.split(r"(?<=[.!?])\s+|\n\s*\n", topics[key]):
            text = " ".join(part.split())
            if min_chars <= len(text) <= max_chars:
                found.append(text)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(found))
    return [found[order[i % len(found)]] for i in range(n)]


@functools.cache
def _digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return np.asarray(load_digits().images)  # (1797, 8, 8) in 0..16


def _digit_images(indices: list[int], channels: int, height: int, width: int) -> np.ndarray:
    """sklearn digits (cycled by index), nearest-neighbour scaled to (C, H, W) in [0, 1]."""
    images = _digits()
    digits = (images[[i % len(images) for i in indices]] / 16.0).astype(np.float32)  # (n, 8, 8)
    k = max(1, math.ceil(max(height, width) / 8))
    big = np.kron(digits, np.ones((1, k, k), np.float32))[:, :height, :width]
    big = np.pad(big, ((0, 0), (0, height - big.shape[1]), (0, width - big.shape[2])))
    return np.repeat(big[:, None], channels, axis=1)  # (n, C, H, W)


def _tabular_rows(n: int, width: int, rng: np.random.Generator, prep: dict[str, Any]) -> np.ndarray:
    from sklearn import datasets

    loaders = {
        30: datasets.load_breast_cancer,
        10: datasets.load_diabetes,
        64: datasets.load_digits,
        13: datasets.load_wine,
        4: datasets.load_iris,
    }
    if width in loaders:
        data = loaders[width]().data.astype(np.float32)
        return data[rng.integers(0, len(data), n)]
    mean = np.asarray(prep.get("mean") or np.zeros(width), np.float32)
    std = np.asarray(prep.get("std") or np.ones(width), np.float32)
    return (rng.standard_normal((n, width)) * std + mean).astype(np.float32)


class _Tokenizer:
    """Sentences -> (input_ids, attention_mask) with the model's tokenizer.

    Default: each sentence at its own length (a request is padded to its longest row only).
    ``seq_len``: every row exactly ``seq_len`` real tokens (following sentences appended).
    ``pad_to``: real sentences right-padded to ``pad_to`` with attention 0 (the "pad everything" case).
    """

    def __init__(self, info: ModelInfo, seq_len: int | None, pad_to: int | None) -> None:
        prep = info.preprocessing
        self.max_length = int(seq_len or pad_to or prep.get("max_length") or 128)
        self.pad_id = int(prep.get("pad_id", 0))
        self.seq_len, self.pad_to = seq_len, pad_to
        self._wordpiece = None
        if prep.get("tokenizer") == "wordpiece" and info.version_dir is not None:
            from tokenizers import Tokenizer

            self._wordpiece = Tokenizer.from_file(str(info.version_dir / prep["tokenizer_file"]))

    def ids(self, text: str) -> list[int]:
        if self._wordpiece is not None:
            return list(self._wordpiece.encode(text).ids)[: self.max_length]
        return list(text.encode("utf-8"))[: self.max_length]

    def batch(self, texts: list[str], filler: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.seq_len:
            texts = [" ".join([t, *filler]) for t in texts]
        rows = [self.ids(t) for t in texts]
        width = self.pad_to or max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        return ids, mask  # (B, T) each


def make_samples(
    info: ModelInfo,
    n: int,
    *,
    rows: int = 1,
    seed: int = 0,
    seq_len: int | None = None,
    pad_to: int | None = None,
) -> list[Sample]:
    """``n`` distinct requests of ``rows`` rows each, for the model's served inputs."""
    rng = np.random.default_rng(seed)
    names = {s.name for s in info.inputs}
    if {"input_ids", "attention_mask"} <= names:
        tok, texts = _Tokenizer(info, seq_len, pad_to), sentences(n * rows + 16)
        out = []
        for i in range(n):
            chunk = texts[i * rows : (i + 1) * rows]
            ids, mask = tok.batch(chunk, texts[(i + 1) * rows : (i + 1) * rows + 16])
            out.append({"input_ids": ids, "attention_mask": mask})
        return out
    return [{s.name: _tensor(info, s, rows, rng, i) for s in info.inputs} for i in range(n)]


def _tensor(info: ModelInfo, spec: InputSpec, rows: int, rng: np.random.Generator, i: int) -> np.ndarray:
    dims = [d if d > 0 else 1 for d in spec.shape[1:]]
    if spec.name == "pixels" and len(dims) == 3:
        return _digit_images([i * rows + r for r in range(rows)], *dims)
    if spec.name == "features" and len(dims) == 1:
        return _tabular_rows(rows, dims[0], rng, info.preprocessing)
    if spec.datatype == "BYTES":
        return np.array([s.encode() for s in sentences(rows + i)[i : i + rows]], dtype=object)
    if spec.datatype.startswith(("FP", "BF")):
        return rng.standard_normal((rows, *dims)).astype(NUMPY_DTYPES.get(spec.datatype, np.float32))
    return rng.integers(0, 2, (rows, *dims)).astype(NUMPY_DTYPES.get(spec.datatype, np.int64))


def prompts(n: int) -> list[str]:
    """Real prompts for generation models: sentence openings from the Python docs."""
    return [" ".join(s.split()[:8]) for s in sentences(n, min_chars=40)]
