from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepserve.handlers import load_handler
from deepserve.handlers.base import Handler, InvalidInputError, PayloadRequest, Request, TensorRequest
from tests.handlers.test_classification import answer

ROWS = [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]


@pytest.fixture(scope="module")
def classifier(tabular_cls: Path) -> Handler:
    return load_handler(tabular_cls, threads=1)


@pytest.fixture(scope="module")
def regressor(regression: Path) -> Handler:
    return load_handler(regression, threads=1)


@pytest.mark.parametrize(
    "body",
    [
        ROWS,
        [{"age": 1, "size": 2, "depth": 3}, {"depth": 0, "size": 0.5, "age": -1}],
        {"instances": ROWS},
        b'{"rows": [[1, 2, 3], [-1, 0.5, 0]]}',
        "1,2,3\n-1,0.5,0\n",
    ],
)
def test_row_forms_give_the_same_features(classifier: Handler, body: object) -> None:
    features = classifier.preprocess(PayloadRequest(body))["features"]
    np.testing.assert_array_equal(features, np.array(ROWS, np.float32))


def test_single_rows_and_kserve_tensor(classifier: Handler) -> None:
    one = classifier.preprocess(PayloadRequest({"age": 1, "size": 2, "depth": 3}))["features"]
    np.testing.assert_array_equal(one, [ROWS[0]])
    ints = classifier.preprocess(TensorRequest({"features": np.array(ROWS, np.float64)}))["features"]
    assert ints.dtype == np.float32 and ints.shape == (2, 3)


def test_tabular_answer_and_batching(classifier: Handler) -> None:
    one = answer(classifier, PayloadRequest(ROWS[0]))
    assert set(one) == {"benign", "malignant"} and abs(sum(one.values()) - 1) < 1e-5
    items = [classifier.preprocess(PayloadRequest(r)) for r in (ROWS, ROWS[:1])]
    batched = classifier.predict_batch(items)
    for item, out in zip(items, batched, strict=True):
        np.testing.assert_allclose(out["logits"], classifier.predict_batch([item])[0]["logits"], atol=1e-6)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (PayloadRequest({"age": 1, "size": 2}), r"row is missing feature\(s\) \['depth'\]"),
        (
            PayloadRequest({"age": 1, "size": 2, "depth": 3, "colour": 4}),
            r"unknown feature\(s\) \['colour'\]",
        ),
        (PayloadRequest({"age": "old", "size": 2, "depth": 3}), r"feature values must be numbers"),
        (PayloadRequest([1.0, 2.0]), r"input 'features' expects rows of 3 numbers, got shape \[1, 2\]"),
        (PayloadRequest("a,b"), r"neither JSON nor CSV"),
        (
            TensorRequest({"features": np.zeros((2, 4), np.float32)}),
            r"input 'features' expects FP32 with shape \[-1, 3\], got float32 array of shape \[2, 4\]",
        ),
        (TensorRequest({"features": np.zeros((0, 3), np.float32)}), r"input 'features' has no rows"),
    ],
)
def test_bad_rows_say_what_is_wrong(classifier: Handler, request_: Request, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        classifier.preprocess(request_)


def test_regression_names_its_targets(regressor: Handler) -> None:
    one = answer(regressor, PayloadRequest({"a": 1, "b": 2, "c": 3}))
    assert list(one) == ["price", "volume"] and all(isinstance(v, float) for v in one.values())
    many = answer(regressor, PayloadRequest(ROWS))
    assert isinstance(many, list) and len(many) == 2
    out = answer(regressor, TensorRequest({"features": np.array(ROWS, np.float32)}))
    assert list(out) == ["predictions"] and out["predictions"].shape == (2, 2)
    assert many[1]["volume"] == pytest.approx(float(out["predictions"][1, 1]))
