"""BPE for the guide GPT: train-split-only tokenizer, round trip, eos id, bits per byte."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from deepserve.training.bpe import END_OF_TEXT, bits_per_byte, bpe_lm_data, train_bpe

TRAIN = "The for statement iterates over the items of a sequence. " * 40
VAL = "Zyxwvq qqqzz jjjkk unique validation words. " * 10


def test_tokenizer_round_trips_text() -> None:
    tok = train_bpe(TRAIN, 300)
    text = "The for statement, ünïcode and tabs\t!"
    assert tok.decode(tok.encode(text).ids) == text
    assert tok.token_to_id(END_OF_TEXT) == 0


def test_tokenizer_sees_train_split_only() -> None:
    data = (TRAIN + VAL).encode()
    task, split = bpe_lm_data(data, 8, 400, val_frac=len(VAL) / len(TRAIN + VAL))
    vocab = split.tokenizer.get_vocab()
    assert "Ġstatement" in vocab
    assert not any("Zyx" in token or "qqq" in token for token in vocab)
    assert task.preprocessing["pad_id"] == 0 and task.assets["tokenizer.json"]
    assert split.val_tokens == task.val.tensors[1].numel()
    # unseen validation words fall back to one token per byte: no merge was learnt from them
    assert split.val_bytes == split.val_tokens
    assert task.train.tensors[1].numel() < len(TRAIN.encode())  # train text does compress


def test_bits_per_byte_formula() -> None:
    # 100 tokens at ln 2 nats each over 50 bytes is 2 bits per byte
    assert bits_per_byte(math.log(2), 100, 50) == pytest.approx(2.0)
    # a byte model: one token per byte, so bits per byte is the loss over ln 2
    assert bits_per_byte(1.5, 10, 10) == pytest.approx(1.5 / math.log(2))


def test_a_bpe_gpt_trains_exports_and_serves_text(tmp_path: Path) -> None:
    """The whole path a user takes: `deepserve train docs-gpt` (BPE), `deepserve export`, a completion."""
    from deepserve.export.exporter import export_checkpoint
    from deepserve.handlers.generation import TextGenerationHandler
    from deepserve.store import ModelSpec
    from deepserve.training.recipes import run_recipe

    ckpt = run_recipe("docs-gpt", tmp_path / "run", quick=True)
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert 0 < report["bits_per_byte"] < report["bits_per_token"]  # several bytes per token
    assert report["unigram_baseline_bits_per_byte"] > 0
    (version,) = export_checkpoint(ckpt, tmp_path / "store", name="docs-gpt", skip_slow=True)
    spec = ModelSpec.read(version)
    assert (version / "tokenizer.json").is_file() and spec.preprocessing.tokenizer == "tokenizers"  # type: ignore[union-attr]
    assert spec.generation is not None and spec.generation.eos_id == 0
    handler = TextGenerationHandler(spec, version, threads=1)
    handler.load()
    prompt = handler.encode("The for statement")
    assert len(prompt) < len("The for statement")  # subwords, not bytes
    ids = handler.generate_ids(prompt, {"max_tokens": 12, "temperature": 0.0})
    assert ids and handler.decode(ids)  # text, through the model's own tokenizer


def test_the_byte_gpt_reports_bits_per_byte_on_the_same_scale(tmp_path: Path) -> None:
    from deepserve.training.recipes import run_recipe

    run_recipe("docs-gpt-bytes", tmp_path / "run", quick=True)
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert report["bits_per_byte"] == pytest.approx(report["bits_per_token"])  # one byte per token
