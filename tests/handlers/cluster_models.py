"""Tiny embedding models for the clustering tests, written as model-store versions in seconds.

``write_blob_model``: an identity embedding of tabular rows, so the served vectors are the planted
blobs themselves and scikit-learn can be asked about the same numbers. ``write_text_model``: a
bag-of-bytes text encoder, so ``/v1/embeddings`` has strings to embed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepserve.store import TabularPreprocessing, TensorSpec, TextPreprocessing
from tests.handlers.tiny import BagOfTokens, write_version

TORCHSCRIPT = [("torchscript", "fp32", True)]
# three "topics" of text, each written with its own letters: the bag-of-bytes vectors group by topic
ALPHABETS = ("abcde", "vwxyz", "klmno")


class Identity(nn.Module):
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features * 1.0  # (B, D): a new tensor, so the graph has an output of its own


def write_blob_model(store: Path, name: str, dim: int) -> Path:
    return write_version(
        store,
        name,
        Identity(),
        (torch.randn(2, dim),),
        task="embedding",
        inputs=[TensorSpec(name="features", datatype="FP32", shape=[-1, dim])],
        outputs=[TensorSpec(name="embedding", datatype="FP32", shape=[-1, dim])],
        files=TORCHSCRIPT,
        preprocessing=TabularPreprocessing(
            features=[f"x{i}" for i in range(dim)], mean=[0.0] * dim, std=[1.0] * dim
        ),
    )


def write_text_model(store: Path, name: str, dim: int = 6) -> Path:
    torch.manual_seed(7)
    ids = [TensorSpec(name=n, datatype="INT64", shape=[-1, -1]) for n in ("input_ids", "attention_mask")]
    return write_version(
        store,
        name,
        BagOfTokens(256, dim),
        (torch.randint(1, 256, (2, 5)), torch.ones(2, 5, dtype=torch.int64)),
        task="embedding",
        inputs=ids,
        outputs=[TensorSpec(name="sentence_embedding", datatype="FP32", shape=[-1, dim])],
        files=TORCHSCRIPT,
        preprocessing=TextPreprocessing(tokenizer="bytes", max_length=32, vocab_size=256),
    )


def topic_texts(per_topic: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Random words of each alphabet in ``ALPHABETS``, labelled by alphabet."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for label, letters in enumerate(ALPHABETS):
        for _ in range(per_topic):
            texts.append("".join(rng.choice(list(letters), size=int(rng.integers(6, 16)))))
            labels.append(label)
    return texts, np.array(labels)
