from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepserve.handlers import torchserve
from deepserve.handlers.torchserve import DeepserveHandler
from tests.handlers.test_classification import grey_pixels, png


class FakeContext:
    """What TorchServe hands a handler: system_properties, manifest, per-request status setters."""

    def __init__(self, model_dir: Path) -> None:
        self.system_properties = {
            "model_dir": str(model_dir),
            "gpu_id": None,
            "batch_size": 4,
            "server_name": "MMS",
            "server_version": "0.12.0",
        }
        self.manifest = {"model": {"modelName": model_dir.parent.name, "handler": "torchserve.py"}}
        self.statuses: dict[int, tuple[int, str]] = {}
        self.content_types: dict[int, str] = {}

    def set_response_status(self, code: int, phrase: str, idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value


@pytest.fixture(scope="module")
def image_service(image_cls: Path) -> tuple[DeepserveHandler, FakeContext]:
    context = FakeContext(image_cls)
    service = DeepserveHandler()
    service.initialize(context)
    assert service.initialized
    return service, context


def test_module_defines_exactly_one_class_as_torchserve_requires() -> None:
    classes = [
        v for v in vars(torchserve).values() if isinstance(v, type) and v.__module__ == torchserve.__name__
    ]
    assert classes == [DeepserveHandler]


def test_a_batch_of_mixed_requests_answers_each_in_order(
    image_service: tuple[DeepserveHandler, FakeContext],
) -> None:
    service, context = image_service
    x = grey_pixels(2, 3)
    data: list[dict[str, Any]] = [
        {"body": bytearray(png(x[0]))},  # curl -T digit.png
        {"data": png(x[1]), "top_k": b"1"},  # multipart field + query string
        {"body": {"pixels": x.tolist()}},  # application/json, two rows
        {"body": b"\x89PNG broken"},  # bad: only this one fails
    ]
    results = service.handle(data, context)
    assert len(results) == 4
    assert isinstance(results[0], dict) and len(results[0]) == 3
    assert isinstance(results[2], list) and len(results[2]) == 2
    assert results[2][0] == pytest.approx(results[0])
    [(label, prob)] = results[1].items()  # top_k=1 of the second image, which is row 1 of the JSON body
    assert prob == pytest.approx(max(results[2][1].values())) and results[2][1][label] == pytest.approx(prob)
    assert results[3]["code"] == 400 and results[3]["type"] == "InvalidInputError"
    assert "not a PNG or JPEG image" in results[3]["message"]
    assert context.statuses == {3: (400, results[3]["message"])}
    assert context.content_types == dict.fromkeys(range(4), "application/json")
    json.dumps(results)  # what TorchServe does with a non-bytes answer


def test_text_and_tabular_models_inside_torchserve(text_cls: Path, regression: Path) -> None:
    for model_dir, row, check in [
        (text_cls, {"body": b"how do I serve a model?"}, lambda r: set(r) <= {"howto", "api", "faq"}),
        (regression, {"body": b"[1, 2, 3]"}, lambda r: list(r) == ["price", "volume"]),
        (regression, {"data": "1,2,3"}, lambda r: list(r) == ["price", "volume"]),
    ]:
        context = FakeContext(model_dir)
        service = DeepserveHandler()
        service.initialize(context)
        [result] = service.handle([row], context)
        assert check(result), result
        assert context.statuses == {}


def test_a_failing_batch_is_retried_item_by_item(
    image_service: tuple[DeepserveHandler, FakeContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, context = image_service
    assert service.handler is not None
    real = service.handler.predict_batch
    sizes: list[int] = []

    def flaky(items: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        sizes.append(len(items))
        if len(items) > 1:
            raise RuntimeError("simulated batch failure")
        return real(items)

    monkeypatch.setattr(service.handler, "predict_batch", flaky)
    results = service.handle([{"body": png(grey_pixels(1, i)[0])} for i in range(3)], context)
    assert sizes == [3, 1, 1, 1] and all(isinstance(r, dict) and len(r) == 3 for r in results)


def test_handle_before_initialize_is_an_error() -> None:
    with pytest.raises(RuntimeError, match=r"initialize\(context\) was not called"):
        DeepserveHandler().handle([{"body": b""}], object())


def test_empty_bodies_and_form_posts_get_a_clear_400(regression: Path) -> None:
    context = FakeContext(regression)
    service = DeepserveHandler()
    service.initialize(context)
    # what TorchServe's frontend hands over for `curl -X POST` and for `curl -d 'a=1'` (a form)
    results = service.handle([{"body": b""}, {"a": b"1"}, {"body": b"[1, 2, 3]"}], context)
    assert results[0]["code"] == 400 and "empty request body" in results[0]["message"]
    assert results[1]["code"] == 400 and "form fields ['a']" in results[1]["message"]
    assert list(results[2]) == ["price", "volume"]
    assert set(context.statuses) == {0, 1}


def test_status_phrases_are_ascii_and_bodies_keep_the_message(regression: Path) -> None:
    # TorchServe frames the phrase by its length in characters and writes UTF-8: non-ASCII kills the worker
    context = FakeContext(regression)
    service = DeepserveHandler()
    service.initialize(context)
    [result] = service.handle([{"body": {"a": 1.0, "b": 2.0, "c": 3.0, "größe": 1.0}}], context)
    code, phrase = context.statuses[0]
    assert code == 400 and phrase.isascii() and "gr??e" in phrase
    assert "größe" in result["message"]

