"""The folder's tokenizer as the server reads it: one tokenizers-library ``tokenizer.json``.

A fast tokenizer's ``tokenizer.json`` is copied; a folder with only a slow tokenizer's files
(vocab.txt, vocab.json + merges.txt, a SentencePiece model) is converted by transformers
(``AutoTokenizer(...).backend_tokenizer``). Either way the written file must encode sample texts
exactly as transformers' ``AutoTokenizer`` does, or the import fails: the server would otherwise
feed the model other ids than its users' own code does.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepserve.imports.base import SourceError
from deepserve.imports.hf_modules import quiet_transformers

SAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password if I no longer have access to my email?",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "Dynamic batching groups concurrent requests so the processor stays busy.",
    "Short.",
    "Paris is the capital and most populous city of France, on the Seine.",
    "Tokenization splits text into subword units before the encoder sees them.",
    "Café, naïve, déjà vu: accents and ünïcödé survive the round trip 😀.",
]


@dataclass(frozen=True)
class WrittenTokenizer:
    file: Path
    pad_id: int
    vocab_size: int  # the tokenizer's own (the model's embedding table may be larger)


def write_tokenizer(
    folder: Path, dst: Path, *, max_length: int, pad_fallback: int | None
) -> WrittenTokenizer:
    """Write ``dst`` (tokenizer.json) from ``folder`` and check it against AutoTokenizer."""
    with quiet_transformers() as transformers:
        try:
            auto = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError, ImportError) as exc:
            raise SourceError(
                f"transformers cannot read the tokenizer in {folder}: {_line(exc)}; save it with "
                "tokenizer.save_pretrained(folder)"
            ) from exc
    backend = getattr(auto, "backend_tokenizer", None)
    if (folder / "tokenizer.json").is_file():
        shutil.copy2(folder / "tokenizer.json", dst)
    elif backend is not None:
        backend.save(str(dst))
    else:
        raise SourceError(
            f"the tokenizer in {folder} ({type(auto).__name__}) has no tokenizers-library form; "
            "save a fast tokenizer (tokenizer.json) with save_pretrained"
        )
    _check_same_ids(auto, dst, max_length)
    pad = auto.pad_token_id if auto.pad_token_id is not None else pad_fallback
    return WrittenTokenizer(dst, int(pad or 0), len(auto))


def _check_same_ids(auto: Any, path: Path, max_length: int) -> None:
    from deepserve.handlers.tokenizer import TokenizersTokenizer

    served = TokenizersTokenizer(path, max_length)  # what the server will run
    for text in SAMPLE_TEXTS:
        want = list(auto(text, truncation=True, max_length=max_length)["input_ids"])
        got = served.encode(text)
        if got != want:
            raise SourceError(
                f"{path.name} encodes {text!r} as {got[:8]}... but transformers' AutoTokenizer as "
                f"{want[:8]}...; save the tokenizer again with save_pretrained (tokenizer.json then holds "
                "its settings)"
            )


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
