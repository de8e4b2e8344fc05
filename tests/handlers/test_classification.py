from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from deepserve.handlers import load_handler
from deepserve.handlers.base import Handler, InvalidInputError, PayloadRequest, Request, TensorRequest
from deepserve.handlers.image import decode_image
from deepserve.store import ImagePreprocessing


def answer(handler: Handler, request: Request) -> Any:
    [out] = handler.predict_batch([handler.preprocess(request)])
    return handler.postprocess(out, request)


def grey_pixels(n: int, seed: int) -> np.ndarray:
    """Pixel values on the 8-bit grid, so a PNG of them decodes to exactly the same floats."""
    levels = np.random.default_rng(seed).integers(0, 256, (n, 1, 8, 8))
    return (levels / 255.0).astype(np.float32)


def png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((pixels[0] * 255).round().astype(np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_handler(image_cls: Path) -> Handler:
    return load_handler(image_cls, threads=1)


def test_image_forms_give_the_same_tensor(image_handler: Handler) -> None:
    x = grey_pixels(2, 0)
    files = [png(x[0]), png(x[1])]
    forms: list[Request] = [
        TensorRequest({"pixels": x}),
        TensorRequest({"image": np.array(files, dtype=object)}),
        TensorRequest({"image": np.array(files, dtype=object).reshape(2, 1)}),
        PayloadRequest([base64.b64encode(f).decode() for f in files]),
        PayloadRequest({"pixels": x.tolist()}),
        PayloadRequest(json.dumps({"image": [base64.b64encode(f).decode() for f in files]}).encode()),
    ]
    for request in forms:
        np.testing.assert_array_equal(image_handler.preprocess(request)["pixels"], x)
    single = image_handler.preprocess(PayloadRequest(files[0]))["pixels"]
    np.testing.assert_array_equal(single, x[:1])


def test_jpeg_rgb_and_size_are_converted_to_the_model_input() -> None:
    pre = ImagePreprocessing(channels=1, height=8, width=8, mean=[0.0], std=[1.0])
    rgb = np.full((16, 16, 3), 200, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG")
    out = decode_image(buffer.getvalue(), pre)
    assert out.shape == (1, 8, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out, 200 / 255, atol=3 / 255)
    colour = decode_image(buffer.getvalue(), pre.model_copy(update={"channels": 3}))
    assert colour.shape == (3, 8, 8)


def test_mixed_size_batch_equals_items_alone(image_handler: Handler) -> None:
    items = [image_handler.preprocess(TensorRequest({"pixels": grey_pixels(n, n)})) for n in (1, 3, 2)]
    batched = image_handler.predict_batch(items)
    assert [len(o["logits"]) for o in batched] == [1, 3, 2]
    for item, out in zip(items, batched, strict=True):
        [alone] = image_handler.predict_batch([item])
        np.testing.assert_allclose(out["logits"], alone["logits"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)


def test_postprocess_top_k_labels(image_handler: Handler) -> None:
    one = answer(
        image_handler, PayloadRequest({"pixels": grey_pixels(1, 4).tolist()}, parameters={"top_k": "2"})
    )
    assert isinstance(one, dict) and len(one) == 2 and set(one) <= {"zero", "one", "two"}
    probs = list(one.values())
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    many = answer(image_handler, PayloadRequest({"pixels": grey_pixels(3, 5).tolist()}))
    assert isinstance(many, list) and len(many) == 3 and all(len(r) == 3 for r in many)


def test_kserve_outputs_and_output_selection(image_handler: Handler) -> None:
    assert [t.name for t in image_handler.inputs] == ["pixels", "image"]
    assert [t.name for t in image_handler.outputs] == ["logits", "probabilities"]
    out = answer(image_handler, TensorRequest({"pixels": grey_pixels(2, 6)}))
    assert set(out) == {"logits", "probabilities"} and out["probabilities"].shape == (2, 3)
    only = answer(image_handler, TensorRequest({"pixels": grey_pixels(2, 6)}, outputs=["probabilities"]))
    assert list(only) == ["probabilities"]
    with pytest.raises(InvalidInputError, match=r"unknown output\(s\) \['scores'\]; this model serves"):
        answer(image_handler, TensorRequest({"pixels": grey_pixels(1, 6)}, outputs=["scores"]))


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            TensorRequest({"pixels": np.zeros((2, 3, 8), np.float32)}),
            r"input 'pixels' expects FP32 with shape \[-1, 1, 8, 8\], got float32 array of shape \[2, 3, 8\]",
        ),
        (TensorRequest({"pixels": np.array([["a"]])}), r"input 'pixels' expects FP32 .* got <U1 array"),
        (
            TensorRequest({"pixel": np.zeros((1, 1, 8, 8), np.float32)}),
            r"unknown input\(s\) \['pixel'\]; this model accepts \['image', 'pixels'\]",
        ),
        (
            TensorRequest({"image": np.array([b"GIF89a-broken"], dtype=object)}),
            r"input 'image': cannot decode 13 bytes: not a PNG or JPEG image$",
        ),
        (PayloadRequest(b"\x89PNG garbage"), r"cannot decode 12 bytes: not a PNG or JPEG image$"),
        (PayloadRequest("not base64!"), r"a string must be base64-encoded image bytes"),
        (PayloadRequest({"picture": 1}), r"JSON body needs 'pixels'"),
        (PayloadRequest({"pixels": [[1, 2], [3]]}), r"input 'pixels' must be a nested list of numbers"),
    ],
)
def test_bad_image_inputs_say_what_is_wrong(image_handler: Handler, request_: Request, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        image_handler.preprocess(request_)


@pytest.mark.parametrize(
    ("top_k", "message"), [("many", "must be an integer, got 'many'"), (0, "must be in")]
)
def test_bad_top_k_is_rejected(image_handler: Handler, top_k: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=f"parameter 'top_k' {message}"):
        answer(
            image_handler, PayloadRequest({"pixels": grey_pixels(1, 0).tolist()}, parameters={"top_k": top_k})
        )
