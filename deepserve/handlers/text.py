"""Text -> ``input_ids`` / ``attention_mask`` INT64 (n, T), padded to the request's longest text.

Accepted forms: KServe v2 ``input_ids`` (+ optional ``attention_mask``, all ones when left out)
INT64 [-1, -1], or ``text`` BYTES [-1, 1] or [-1] (UTF-8); a body that is a string, UTF-8 bytes, a list of
strings, token ids (a list of ints, or a list of such lists), or JSON ``{"text" | "input" | "inputs" |
"data": ...}`` holding any of those.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deepserve.handlers.base import InvalidInputError, Tensors
from deepserve.handlers.codec import InputCodec, parse_json
from deepserve.handlers.tensors import bytes_items
from deepserve.handlers.tokenizer import encode_texts, load_tokenizer
from deepserve.store import TensorSpec, TextPreprocessing

TEXT_INPUT = TensorSpec(name="text", datatype="BYTES", shape=[-1, 1], optional=True)  # as image.IMAGE_INPUT
_KEYS = ("text", "input", "inputs", "data")


class TextCodec(InputCodec):
    def __init__(self, graph_inputs: list[TensorSpec], pre: TextPreprocessing, version_dir: Path) -> None:
        super().__init__(graph_inputs)
        self.pre = pre
        self.tokenizer = load_tokenizer(version_dir, pre)

    @property
    def extra_inputs(self) -> list[TensorSpec]:
        return [TEXT_INPUT]

    @property
    def optional_inputs(self) -> set[str]:
        return {"attention_mask"}

    @property
    def pad_values(self) -> dict[str, int]:
        return {"input_ids": self.pre.pad_id, "attention_mask": 0}

    def complete(self, feeds: Tensors) -> Tensors:
        ids = feeds["input_ids"]
        if ids.shape[1] == 0 or ids.shape[1] > self.pre.max_length:
            limit = self.pre.max_length
            raise InvalidInputError(f"input 'input_ids' length {ids.shape[1]} is outside 1..{limit}")
        if ids.min() < 0 or ids.max() >= self.pre.vocab_size:
            raise InvalidInputError(f"input 'input_ids' holds ids outside 0..{self.pre.vocab_size - 1}")
        mask = feeds.get("attention_mask")
        if mask is None:
            mask = np.ones_like(ids)
        elif mask.shape != ids.shape:
            raise InvalidInputError(f"input 'attention_mask' shape {list(mask.shape)} differs from "
                                    f"'input_ids' shape {list(ids.shape)}")  # fmt: skip
        return {"input_ids": ids, "attention_mask": mask}

    def decode_extra(self, tensors: Tensors) -> Tensors:
        return self.encode([_utf8(b) for b in bytes_items("text", tensors["text"])])

    def encode(self, texts: list[str]) -> Tensors:
        return encode_texts(self.tokenizer, texts, pad_id=self.pre.pad_id)

    def from_ids(self, body: list[Any]) -> Tensors:
        """Pre-tokenised input (OpenAI embeddings accept token arrays): one list of ids or several."""
        rows = [body] if isinstance(body[0], int) else body
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pre.pad_id, dtype=np.int64)  # (n, T)
        mask = np.zeros((len(rows), width), dtype=np.int64)  # (n, T)
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = row, 1
        return self.check_graph({"input_ids": ids, "attention_mask": mask})

    def from_payload(self, body: Any, parameters: dict[str, Any]) -> Tensors:
        if isinstance(body, bytes | bytearray):
            body = _utf8(bytes(body))
        body = parse_json(body) if isinstance(body, str) and body[:1] in "[{" else body
        if isinstance(body, dict):
            key = next((k for k in _KEYS if k in body), None)
            if key is None:
                msg = f"JSON body needs one of {list(_KEYS)} holding a string or a list of strings"
                raise InvalidInputError(msg)
            body = body[key]
        if isinstance(body, str):
            body = [body]
        if _token_ids(body):
            return self.from_ids(body)
        if not isinstance(body, list) or not body or not all(isinstance(t, str) for t in body):
            raise InvalidInputError("input 'text' must be a string or a non-empty list of strings")
        return self.encode(body)


def _token_ids(body: Any) -> bool:
    def is_ids(row: Any) -> bool:
        return isinstance(row, list) and bool(row) and all(type(t) is int for t in row)

    return is_ids(body) or (isinstance(body, list) and bool(body) and all(is_ids(r) for r in body))


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"input 'text' is not valid UTF-8: {exc}") from exc
