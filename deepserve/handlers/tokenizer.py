"""Text -> token ids: UTF-8 bytes (vocab 256, the zoo's text models) or a WordPiece tokenizer.json (minilm).

``encode_texts`` pads a request's texts to its longest (``pad_id``, attention mask 0) and
truncates each to the model's ``max_length``; the batcher pads again across requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from deepserve.handlers.base import InvalidInputError, ModelLoadError, Tensors
from deepserve.store import TextPreprocessing


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


class BytesTokenizer:
    """Token ids are the UTF-8 bytes of the text."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8")[: self.max_length])


class WordpieceTokenizer:
    """A ``tokenizers`` tokenizer.json; its post-processor adds [CLS]/[SEP], truncation keeps them."""

    def __init__(self, path: Path, max_length: int) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for bad JSON
            raise ModelLoadError(f"cannot read tokenizer {path}: {exc}; re-export the model") from exc
        self._tok.no_padding()
        self._tok.enable_truncation(max_length)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)


def load_tokenizer(version_dir: Path, pre: TextPreprocessing) -> Tokenizer:
    if pre.tokenizer == "bytes":
        return BytesTokenizer(pre.max_length)
    path = version_dir / (pre.tokenizer_file or "tokenizer.json")
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: this wordpiece model needs it; re-export the model")
    return WordpieceTokenizer(path, pre.max_length)


def encode_texts(tokenizer: Tokenizer, texts: list[str], *, pad_id: int) -> Tensors:
    """input_ids / attention_mask INT64 (n, T), T = the longest text's token count."""
    ids = [tokenizer.encode(t) for t in texts]
    if not ids or any(len(row) == 0 for row in ids):
        raise InvalidInputError("input 'text' has an empty string; send non-empty text")
    width = max(len(row) for row in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)  # (n, T)
    mask = np.zeros((len(ids), width), dtype=np.int64)  # (n, T)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}
