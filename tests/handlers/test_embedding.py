from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepserve.handlers import load_handler
from deepserve.handlers.base import Handler, InvalidInputError, PayloadRequest, TensorRequest
from tests.handlers.conftest import WORDPIECE_VOCAB
from tests.handlers.test_classification import answer, grey_pixels, png


@pytest.fixture(scope="module")
def text_handler(text_embedding: Path) -> Handler:
    return load_handler(text_embedding, threads=1)


def test_wordpiece_adds_special_tokens_and_pads(text_handler: Handler) -> None:
    item = text_handler.preprocess(PayloadRequest(["Hello world", "models serve fast"]))
    ids = [[WORDPIECE_VOCAB[i] for i in row] for row in item["input_ids"]]
    assert ids == [
        ["[CLS]", "hello", "world", "[SEP]", "[PAD]", "[PAD]"],
        ["[CLS]", "model", "##s", "serve", "fast", "[SEP]"],
    ]
    np.testing.assert_array_equal(item["attention_mask"], [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])


def test_wordpiece_truncates_keeping_sep(text_handler: Handler) -> None:
    item = text_handler.preprocess(PayloadRequest("hello " * 20))
    assert item["input_ids"].shape == (1, 8) and item["input_ids"][0, -1] == WORDPIECE_VOCAB.index("[SEP]")


def test_embeddings_answer_vectors_and_normalise_on_request(text_handler: Handler) -> None:
    texts = ["hello", "a model serves hello world fast"]
    raw = answer(text_handler, PayloadRequest(texts))
    assert len(raw) == 2 and all(len(v) == 6 for v in raw)
    unit = answer(text_handler, PayloadRequest(texts, parameters={"normalize": True}))
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.array(unit) * np.linalg.norm(raw, axis=1, keepdims=True), raw, rtol=1e-4)
    tensors = answer(
        text_handler, TensorRequest({"text": np.array(texts, dtype=object)}, parameters={"normalize": "true"})
    )
    np.testing.assert_allclose(tensors["sentence_embedding"], unit, rtol=1e-5)


def test_padding_does_not_change_embeddings(text_handler: Handler) -> None:
    items = [text_handler.preprocess(PayloadRequest(t)) for t in ("hello", "a model serves hello world fast")]
    for item, out in zip(items, text_handler.predict_batch(items), strict=True):
        np.testing.assert_allclose(
            out["sentence_embedding"], text_handler.predict_batch([item])[0]["sentence_embedding"], atol=1e-6
        )


def test_bad_normalize_parameter(text_handler: Handler) -> None:
    with pytest.raises(InvalidInputError, match=r"parameter 'normalize' must be true or false, got 'maybe'"):
        answer(text_handler, PayloadRequest("hello", parameters={"normalize": "maybe"}))


def test_image_embedding_from_png_or_pixels(image_embedding: Path) -> None:
    handler = load_handler(image_embedding, threads=1)
    x = grey_pixels(1, 9)
    from_png = answer(handler, PayloadRequest(png(x[0])))
    from_tensor = answer(handler, TensorRequest({"pixels": x}))
    assert [t.name for t in handler.outputs] == ["latent_mean"]
    np.testing.assert_allclose(from_png, from_tensor["latent_mean"], rtol=1e-5, atol=1e-6)
