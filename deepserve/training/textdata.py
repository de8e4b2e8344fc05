"""Text data: byte-level language-model windows, and topic-labelled snippets as bytes or subwords.

Byte token ids are the UTF-8 bytes (vocab 256, pad id 0: NUL never occurs in text). Splits are by
position, never by shuffling windows, so overlapping train windows cannot leak into val/test.
``subword_snippets`` re-tokenises the same snippets with a pretrained encoder's tokenizer.json
(WordPiece for MiniLM), exactly as the server will tokenise a request's text.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch.utils.data import TensorDataset

from deepserve.training.checkpoint import fingerprint
from deepserve.training.data import BYTE_VOCAB, DataError, TaskData, as_ids, topics_text, windows


def text_preprocessing(max_length: int) -> dict[str, Any]:
    return {
        "kind": "text",
        "tokenizer": "bytes",
        "max_length": max_length,
        "pad_id": 0,
        "vocab_size": BYTE_VOCAB,
    }


def lm_data(data: bytes, context: int, *, val_frac: float = 0.1, source: str = "") -> TaskData:
    """Next-byte prediction: train windows overlap by half a context; val windows do not overlap."""
    ids = as_ids(data)
    cut = int(len(ids) * (1 - val_frac))
    train_w, val_w = (
        windows(ids[:cut], context + 1, max(1, context // 2)),
        windows(ids[cut:], context + 1, context),
    )
    if len(train_w) < 2 or len(val_w) < 1:
        need = 2 * (context + 1) * round(1 / val_frac)
        raise DataError(
            f"text too short: {len(ids)} bytes; a context of {context} needs at least about "
            f"{need} bytes (or pass a smaller --context)"
        )
    empty = torch.zeros(0, context, dtype=torch.long)
    return TaskData(
        "text-generation",
        "text",
        TensorDataset(train_w[:, :-1], train_w[:, 1:]),
        TensorDataset(val_w[:, :-1], val_w[:, 1:]),
        TensorDataset(empty, empty),
        text_preprocessing(context),
        fingerprint(data),
        [],
        source,
    )


def lm_ids(task: TaskData) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat train / val byte ids of an ``lm_data`` task (for the unigram baseline)."""
    return task.train.tensors[0].flatten(), task.val.tensors[0].flatten()


def topic_corpus() -> bytes:
    return b"\n\n".join(topics_text().values())


SPLIT_CUTS = (0.8, 0.9)  # each topic's text: train up to 80 %, val to 90 %, test the rest


def snippet_spans(
    n_bytes: int, length: int, train_stride: int | None = None
) -> dict[str, list[tuple[int, int]]]:
    """[start, end) byte spans of one topic's ``length``-byte windows, by split.

    The text is cut at ``SPLIT_CUTS`` by position and each part is windowed on its own, so no
    window straddles a cut and no training window holds a val / test byte. Train windows step
    ``train_stride`` (default half a window; overlapping windows act as random-crop augmentation).
    Val / test windows step half a window too, inside their own part: twice the scored snippets
    (every byte is scored at two offsets), which averages out where a window happens to start.
    They are not independent: a 10 % part still holds only ``len(part) / length`` windows of
    distinct text, so the accuracy's spread is wider than the row count suggests.
    """
    a, b = (int(n_bytes * cut) for cut in SPLIT_CUTS)
    eval_stride = max(1, length // 2)
    parts = {
        "train": (0, a, train_stride or length // 2),
        "val": (a, b, eval_stride),
        "test": (b, n_bytes, eval_stride),
    }
    return {
        split: [(s, s + length) for s in range(lo, hi - length + 1, step)]
        for split, (lo, hi, step) in parts.items()
    }


def topic_snippets(
    n_topics: int = 8,
    length: int = 128,
    train_stride: int | None = None,
    topics: tuple[str, ...] | None = None,
) -> TaskData:
    """``length``-byte snippets of the given reference ``topics`` (default: the ``n_topics``
    largest), labelled by topic, split by position as ``snippet_spans`` says."""
    every = topics_text()
    missing = [t for t in topics or () if t not in every]
    if missing:
        raise DataError(f"unknown reference topic(s) {', '.join(missing)}; see pydoc_data.topics")
    texts = (
        [(t, every[t]) for t in topics]
        if topics
        else sorted(every.items(), key=lambda kv: -len(kv[1]))[:n_topics]
    )
    labels = sorted(name for name, _ in texts)
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"train": [], "val": [], "test": []}
    for name, data in texts:
        ids, y = as_ids(data), labels.index(name)
        for split, spans in snippet_spans(len(ids), length, train_stride).items():
            w = torch.stack([ids[s:e] for s, e in spans]) if spans else ids.new_zeros((0, length))
            parts[split].append((w, torch.full((len(w),), y)))

    def dataset(split: str) -> TensorDataset:
        ids = torch.cat([w for w, _ in parts[split]])
        return TensorDataset(ids, torch.ones_like(ids), torch.cat([y for _, y in parts[split]]))

    return TaskData(
        "classification",
        "text",
        dataset("train"),
        dataset("val"),
        dataset("test"),
        text_preprocessing(length),
        fingerprint(*(d for _, d in texts)),
        labels,
        f"pydoc_data.topics, topics {', '.join(labels)}",
    )


def snippet_text(window: torch.Tensor) -> str:
    """A byte window as the text a client would send (a character cut at either end is dropped)."""
    return bytes(window.tolist()).decode("utf-8", errors="ignore")


# The MiniLM docs-classifier's snippets (the recipes chose the length on the validation split), and
# ``subword_snippets``' default: held-out rows rebuilt for a subword checkpoint are its test snippets.
DOCS_SNIPPET_BYTES = 512


def subword_snippets(
    tokenizer: Any,
    max_tokens: int,
    *,
    topics: tuple[str, ...],
    length: int = DOCS_SNIPPET_BYTES,
    train_stride: int | None = None,
) -> TaskData:
    """``topic_snippets`` (same windows, same splits) tokenised by a ``tokenizers`` tokenizer that
    adds the encoder's special tokens and truncates at ``max_tokens``; rows right-padded to it."""
    byte_data = topic_snippets(length=length, train_stride=train_stride, topics=topics)
    pad_id = tokenizer.token_to_id("[PAD]") or 0

    def encode(split: TensorDataset) -> TensorDataset:
        windows, _, y = split.tensors
        encodings = tokenizer.encode_batch([snippet_text(w) for w in windows])
        ids = torch.full((len(windows), max_tokens), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(encodings):
            row = e.ids[:max_tokens]
            ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
        return TensorDataset(ids, mask, y)

    prep = {
        "kind": "text",
        "tokenizer": "tokenizers",
        "tokenizer_file": "tokenizer.json",
        "max_length": max_tokens,
        "pad_id": pad_id,
        "vocab_size": tokenizer.get_vocab_size(),
    }
    return replace(
        byte_data,
        train=encode(byte_data.train),
        val=encode(byte_data.val),
        test=encode(byte_data.test),
        preprocessing=prep,
        assets={"tokenizer.json": tokenizer.to_str()},
    )


def subsample(data: TaskData, sizes: tuple[int, int, int]) -> TaskData:
    """Evenly spaced rows of each split (every topic kept): quick runs of the subword recipes."""

    def take(split: TensorDataset, n: int) -> TensorDataset:
        idx = torch.linspace(0, len(split) - 1, min(n, len(split))).round().long()
        return TensorDataset(*(t[idx] for t in split.tensors))

    train, val, test = (take(s, n) for s, n in zip((data.train, data.val, data.test), sizes, strict=True))
    return replace(data, train=train, val=val, test=test)
