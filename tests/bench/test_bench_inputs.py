"""Real inputs per task, shaped like the served signature."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepserve.bench.ceiling import stack
from deepserve.bench.inputs import InputSpec, ModelInfo, make_samples, prompts, sentences
from deepserve.bench.model_info import from_store


def test_images_are_digits_scaled_to_the_model_size() -> None:
    info = ModelInfo("m", "classification", [InputSpec("pixels", "FP32", [-1, 3, 224, 224])])
    (s,) = make_samples(info, 1, rows=2)
    assert s["pixels"].shape == (2, 3, 224, 224) and s["pixels"].dtype == np.float32
    assert s["pixels"].min() >= 0.0 and s["pixels"].max() <= 1.0 and s["pixels"].std() > 0.1
    np.testing.assert_array_equal(s["pixels"][0, 0], s["pixels"][0, 2])  # grey digit on every channel


def test_tabular_rows_come_from_the_matching_dataset() -> None:
    from sklearn.datasets import load_breast_cancer

    info = ModelInfo("m", "classification", [InputSpec("features", "FP32", [-1, 30])])
    rows = np.concatenate([s["features"] for s in make_samples(info, 8)])
    data = load_breast_cancer().data.astype(np.float32)
    assert all((data == row).all(axis=1).any() for row in rows)


def test_text_is_real_mixed_length_sentences_tokenized_as_bytes() -> None:
    info = ModelInfo(
        "m",
        "embedding",
        [InputSpec("input_ids", "INT64", [-1, -1]), InputSpec("attention_mask", "INT64", [-1, -1])],
        preprocessing={"kind": "text", "tokenizer": "bytes", "max_length": 128, "pad_id": 0},
    )
    samples = make_samples(info, 16)
    lengths = {s["input_ids"].shape[1] for s in samples}
    assert len(lengths) > 4 and max(lengths) <= 128  # mixed lengths, truncated to the context
    s = samples[0]
    assert bytes(s["input_ids"][0].tolist()).decode() in sentences(1)[0]
    full = make_samples(info, 4, seq_len=128)  # exactly 128 real tokens per row
    assert {f["input_ids"].shape for f in full} == {(1, 128)} and all(f["attention_mask"].all() for f in full)
    padded = make_samples(info, 4, pad_to=128)  # the same sentences, padded with attention 0
    assert {p["input_ids"].shape for p in padded} == {(1, 128)}
    assert [int(p["attention_mask"].sum()) for p in padded] == [x["input_ids"].shape[1] for x in samples[:4]]
    batch = stack(samples[:4])  # the ceiling pads a batch to its longest sentence
    assert batch["input_ids"].shape == (4, max(x["input_ids"].shape[1] for x in samples[:4]))


def test_prompts_and_bytes_inputs() -> None:
    assert len(set(prompts(10))) == 10
    info = ModelInfo("gpt", "text-generation", [InputSpec("text_input", "BYTES", [-1])])
    (s,) = make_samples(info, 1)
    assert s["text_input"].dtype == object and isinstance(s["text_input"][0], bytes)


def test_model_info_from_a_store_version(tiny_store: Path) -> None:
    info = from_store(tiny_store, "tiny-mlp")
    assert info.task == "classification" and info.max_batch_size == 32
    assert [i.name for i in info.inputs] == ["features"]
    assert info.version_dir == tiny_store / "tiny-mlp" / "1"
