"""Text <-> token ids: UTF-8 bytes (vocab 256, the zoo's text models) or a tokenizers-library tokenizer.json.

``tokenizer.json`` is any ``tokenizers`` model (WordPiece for minilm and BERT folders, byte-level BPE
for GPT-2, Unigram, ...): model.json names it "wordpiece" (the first stores) or "tokenizers".

``encode_texts`` pads a request's texts to its longest (``pad_id``, attention mask 0) and
truncates each to the model's ``max_length``; the batcher pads again across requests.

Streaming text out of a generator token by token (``text_stream``) must never show a broken
character: a byte token may be half of a UTF-8 character, and a BPE token may be half of one too
(byte-level BPE splits emoji and CJK across tokens), or decode differently once its neighbour
arrives (WordPiece "##" pieces, SentencePiece's leading space). Both streams hold text back until
it is final.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Protocol

import numpy as np

from deepserve.handlers.base import InvalidInputError, ModelLoadError, Tensors
from deepserve.store import TextPreprocessing


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


class TextStream(Protocol):
    """Token ids in, text safe to show out; ``flush`` gives what is left when the sequence ends."""

    def push(self, token: int) -> str: ...

    def flush(self) -> str: ...


class BytesTokenizer:
    """Token ids are the UTF-8 bytes of the text (``max_length`` None: no truncation)."""

    def __init__(self, max_length: int | None) -> None:
        self.max_length = max_length

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8")[: self.max_length])

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def text_stream(self) -> TextStream:
        return ByteStream()


class TokenizersTokenizer:
    """A ``tokenizers`` tokenizer.json; its post-processor adds the model's special tokens ([CLS]/[SEP],
    a BOS), truncation to ``max_length`` keeps them (None: no truncation, the caller checks lengths)."""

    def __init__(self, path: Path, max_length: int | None) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for bad JSON
            raise ModelLoadError(f"cannot read tokenizer {path}: {exc}; re-export the model") from exc
        self._tok.no_padding()
        if max_length is None:
            self._tok.no_truncation()
        else:
            self._tok.enable_truncation(max_length)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))

    def text_stream(self) -> TextStream:
        return TokenizerStream(self)


# The name the first stores' loader had (minilm's WordPiece); the class reads any tokenizer.json.
WordpieceTokenizer = TokenizersTokenizer


class ByteStream:
    """Byte tokens -> text: an incremental UTF-8 decoder holds a character's first bytes back."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return str(self._decoder.decode(bytes((token,))))

    def flush(self) -> str:
        return str(self._decoder.decode(b"", final=True))


class TokenizerStream:
    """Tokenizer tokens -> text by decoding a window of recent ids and emitting only what grew.

    The window starts a few tokens back (``_prefix``), so a token decodes in its context; new text
    that ends in U+FFFD is a partial character and waits for the next token (the scheme of
    transformers' TextStreamer and text-generation-inference).
    """

    def __init__(self, tokenizer: TokenizersTokenizer) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # ids before this one have been emitted

    def push(self, token: int) -> str:
        self._ids.append(token)
        before = self._tok.decode(self._ids[self._prefix : self._read])
        now = self._tok.decode(self._ids[self._prefix :])
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return now[len(before) :]

    def flush(self) -> str:
        before = self._tok.decode(self._ids[self._prefix : self._read])
        now = self._tok.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return now[len(before) :]


def tokenizer_path(version_dir: Path, pre: TextPreprocessing) -> Path:
    path = version_dir / (pre.tokenizer_file or "tokenizer.json")
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: this {pre.tokenizer} model needs it; re-export the model")
    return path


def load_tokenizer(version_dir: Path, pre: TextPreprocessing) -> Tokenizer:
    if pre.tokenizer == "bytes":
        return BytesTokenizer(pre.max_length)
    return TokenizersTokenizer(tokenizer_path(version_dir, pre), pre.max_length)


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
