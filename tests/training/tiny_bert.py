"""A tiny BERT folder standing in for all-MiniLM-L6-v2, built offline (``from_config`` + ``save_pretrained``).

Random weights (fixed seed) and a WordPiece tokenizer trained here on the reference topics, so
topic snippets tokenise into real pieces (a random encoder's mean-pooled pieces are a bag of
words: enough for a head to beat chance). ``use_tiny_bert(monkeypatch, folder)`` points the
MiniLM recipes at it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.imports.hf_folders import wordpiece

HIDDEN, LAYERS = 32, 2


def _tokenizer() -> object:
    from deepserve.training.data import topics_text

    return wordpiece([t.decode("utf-8") for t in topics_text().values()], 600)


def tiny_bert(folder: Path, *, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    tok = _tokenizer()
    config = BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    BertModel(config).eval().save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def use_tiny_bert(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """The MiniLM recipes read ``folder`` instead of the installed package."""
    monkeypatch.setattr("deepserve.training.encoders.minilm_folder", lambda: folder)
    monkeypatch.setattr("deepserve.training.recipes.installed", lambda module: True)
