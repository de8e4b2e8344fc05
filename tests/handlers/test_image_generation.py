from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepserve.handlers import load_handler
from deepserve.handlers.base import Handler, InvalidInputError, PayloadRequest, Request, TensorRequest
from tests.handlers.test_classification import answer


@pytest.fixture(scope="module")
def handler(generator: Path) -> Handler:
    return load_handler(generator, threads=1)


def test_seeded_payload_equals_kserve_seeds(handler: Handler) -> None:
    body = handler.preprocess(PayloadRequest({"n": 2, "seed": 7}))["latent"]
    tensors = handler.preprocess(TensorRequest({"seed": np.array([7, 8])}))["latent"]
    params = handler.preprocess(PayloadRequest(b"", parameters={"n": "2", "seed": "7"}))["latent"]
    assert body.shape == (2, 4)
    np.testing.assert_array_equal(body, tensors)
    np.testing.assert_array_equal(body, params)
    first, second = (handler.preprocess(PayloadRequest(None))["latent"] for _ in range(2))
    assert not np.array_equal(first, second)  # no seed: random


def test_answer_is_base64_png_matching_the_images(handler: Handler) -> None:
    request = PayloadRequest({"n": 3, "seed": 1})
    [out] = handler.predict_batch([handler.preprocess(request)])
    result = handler.postprocess(out, request)
    assert len(result["images"]) == 3
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["images"][2]))), np.float32) / 255
    np.testing.assert_allclose(decoded, out["images"][2, 0], atol=1 / 255 + 1e-6)


def test_kserve_outputs_images_and_png(handler: Handler) -> None:
    assert [t.name for t in handler.inputs] == ["latent", "seed"]
    assert [(t.name, t.datatype) for t in handler.outputs] == [("images", "FP32"), ("png", "BYTES")]
    z = np.zeros((2, 4), np.float32)
    out = answer(handler, TensorRequest({"latent": z}, outputs=["png"]))
    assert list(out) == ["png"] and out["png"].dtype == object
    assert all(f.startswith(b"\x89PNG") for f in out["png"])


def test_mixed_size_batch_equals_items_alone(handler: Handler) -> None:
    items = [handler.preprocess(PayloadRequest({"n": n, "seed": n})) for n in (2, 1, 3)]
    for item, out in zip(items, handler.predict_batch(items), strict=True):
        np.testing.assert_allclose(out["images"], handler.predict_batch([item])[0]["images"], atol=1e-6)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (PayloadRequest({"n": 0}), r"parameter 'n' must be in 1\.\.16, got 0"),
        (PayloadRequest({"n": 1000}), r"parameter 'n' must be in 1\.\.16, got 1000"),
        (PayloadRequest({"seed": -3}), r"parameter 'seed' must be in >= 0"),
        (PayloadRequest("[1, 2]"), r"body must be JSON like"),
        (
            PayloadRequest({"latent": [[0.0, 1.0]]}),
            r"input 'latent' expects rows of 4 numbers, got shape \[1, 2\]",
        ),
        (
            TensorRequest({"seed": np.array([1.5])}),
            r"input 'seed' expects INT64 with shape \[-1\], got float64",
        ),
    ],
)
def test_bad_generation_requests(handler: Handler, request_: Request, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        handler.preprocess(request_)
