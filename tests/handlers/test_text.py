from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepserve.handlers import load_handler
from deepserve.handlers.base import Handler, InvalidInputError, PayloadRequest, Request, TensorRequest
from tests.handlers.test_classification import answer


@pytest.fixture(scope="module")
def handler(text_cls: Path) -> Handler:
    return load_handler(text_cls, threads=1)


def test_text_forms_encode_to_bytes_padded_per_request(handler: Handler) -> None:
    want_ids = np.array([[104, 105, 0], [121, 111, 33]], np.int64)
    want_mask = np.array([[1, 1, 0], [1, 1, 1]], np.int64)
    forms: list[Request] = [
        PayloadRequest(["hi", "yo!"]),
        PayloadRequest({"text": ["hi", "yo!"]}),
        PayloadRequest(b'["hi", "yo!"]'),
        TensorRequest({"text": np.array([b"hi", "yo!"], dtype=object)}),
        TensorRequest({"input_ids": want_ids, "attention_mask": want_mask}),
    ]
    for request in forms:
        item = handler.preprocess(request)
        np.testing.assert_array_equal(item["input_ids"], want_ids)
        np.testing.assert_array_equal(item["attention_mask"], want_mask)
    assert handler.item_cost(handler.preprocess(forms[0])) == 6
    single = handler.preprocess(PayloadRequest("héllo".encode()))
    assert single["input_ids"].shape == (1, 6)  # bytes, not characters


def test_missing_attention_mask_means_attend_to_all(handler: Handler) -> None:
    item = handler.preprocess(TensorRequest({"input_ids": np.array([[65, 66]], np.int32)}))
    assert item["input_ids"].dtype == np.int64
    np.testing.assert_array_equal(item["attention_mask"], [[1, 1]])


def test_padding_across_requests_does_not_change_results(handler: Handler) -> None:
    texts = ["a", "a somewhat longer sentence", "mid length"]
    items = [handler.preprocess(PayloadRequest(t)) for t in texts]
    batched = handler.predict_batch(items)
    for item, out in zip(items, batched, strict=True):
        [alone] = handler.predict_batch([item])
        np.testing.assert_allclose(out["logits"], alone["logits"], rtol=1e-5, atol=1e-6)
    top = answer(handler, PayloadRequest("how do I serve?", parameters={"top_k": 1}))
    assert len(top) == 1 and next(iter(top)) in {"howto", "api", "faq"}


def test_long_text_is_truncated_to_max_length(handler: Handler) -> None:
    item = handler.preprocess(PayloadRequest("x" * 100))
    assert item["input_ids"].shape == (1, 32)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (PayloadRequest(""), r"input 'text' has an empty string"),
        (PayloadRequest(b"\xff\xfe"), r"input 'text' is not valid UTF-8"),
        (PayloadRequest([1.5, "a"]), r"input 'text' must be a string or a non-empty list of strings"),
        (PayloadRequest({"prompt": "x"}), r"JSON body needs one of \['text', 'input', 'inputs', 'data'\]"),
        (TensorRequest({"input_ids": np.array([[300]])}), r"ids outside 0\.\.255"),
        (TensorRequest({"input_ids": np.ones((1, 40), np.int64)}), r"length 40 is outside 1\.\.32"),
        (
            TensorRequest({"input_ids": np.ones((1, 4), np.float32)}),
            r"input 'input_ids' expects INT64 with shape \[-1, -1\], got float32 array of shape \[1, 4\]",
        ),
        (
            TensorRequest(
                {"input_ids": np.ones((1, 4), np.int64), "attention_mask": np.ones((1, 3), np.int64)}
            ),
            r"'attention_mask' shape \[1, 3\] differs from 'input_ids' shape \[1, 4\]",
        ),
        (TensorRequest({"attention_mask": np.ones((1, 3), np.int64)}), r"missing input\(s\) \['input_ids'\]"),
        (
            TensorRequest({"text": np.array([1, 2], dtype=object)}),
            r"input 'text' expects BYTES elements, got int",
        ),
        (TensorRequest({}), r"no input given; send \['attention_mask', 'input_ids'\] or \['text'\]"),
    ],
)
def test_bad_text_inputs_say_what_is_wrong(handler: Handler, request_: Request, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        handler.preprocess(request_)


def test_token_id_lists_are_accepted_like_openai_token_arrays(handler: Handler) -> None:
    one = handler.preprocess(PayloadRequest([104, 105]))
    np.testing.assert_array_equal(one["input_ids"], [[104, 105]])
    many = handler.preprocess(PayloadRequest({"input": [[104, 105, 33], [121]]}))
    np.testing.assert_array_equal(many["input_ids"], [[104, 105, 33], [121, 0, 0]])
    np.testing.assert_array_equal(many["attention_mask"], [[1, 1, 1], [1, 0, 0]])
    with pytest.raises(InvalidInputError, match=r"ids outside 0\.\.255"):
        handler.preprocess(PayloadRequest([[999]]))
