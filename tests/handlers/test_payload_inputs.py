"""The extra payload inputs (``image`` / ``text`` / ``seed``): one form per request, a batch shape
tools can fill, and ``optional`` so perf_analyzer needs data for the graph's inputs only."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from deepserve.handlers import load_handler
from deepserve.handlers.base import Handler, InvalidInputError, TensorRequest

_FIXTURES = ["image_cls", "image_embedding", "text_cls", "text_embedding", "generator"]


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _graph_rows(handler: Handler) -> dict[str, np.ndarray]:
    """One valid row of the graph's own inputs."""
    rows: dict[str, np.ndarray] = {}
    for t in handler.spec.inputs:
        shape = [1 if d == -1 else d for d in t.shape]
        rows[t.name] = np.ones(shape, np.int64 if t.datatype == "INT64" else np.float32)
    return rows


def _payload(name: str, rows: int) -> np.ndarray:
    if name == "seed":
        return np.arange(rows, dtype=np.int64)
    value: Any = _png() if name == "image" else b"hello world"
    return np.array([value] * rows, dtype=object)


@pytest.fixture(scope="module", params=_FIXTURES)
def handler(request: pytest.FixtureRequest) -> Handler:
    return load_handler(request.getfixturevalue(request.param), threads=1)


def test_payload_input_is_batched_and_optional_graph_inputs_required(handler: Handler) -> None:
    *graph, extra = handler.inputs
    assert extra.name in {"image", "text", "seed"}
    assert extra.shape == [-1, 1] and extra.optional  # perf_analyzer: dims [1] once the batch is off
    assert [t.name for t in graph] == [t.name for t in handler.spec.inputs]
    required = {t.name for t in graph if not t.optional}
    assert required == ({"input_ids"} if extra.name == "text" else {t.name for t in graph})


@pytest.mark.parametrize("shape", [(2,), (2, 1)])
def test_payload_input_alone_is_served_flat_or_as_rows(handler: Handler, shape: tuple[int, ...]) -> None:
    name = handler.inputs[-1].name
    item = handler.preprocess(TensorRequest({name: _payload(name, 2).reshape(shape)}))
    assert handler.item_rows(item) == 2


def test_both_forms_at_once_are_refused_naming_them(handler: Handler) -> None:
    name = handler.inputs[-1].name
    tensors = {**_graph_rows(handler), name: _payload(name, 1)}
    message = r"mix two forms; send \[.+\] or \['" + name + r"'\], not both"
    with pytest.raises(InvalidInputError, match=message) as exc:
        handler.preprocess(TensorRequest(tensors))
    assert exc.value.status == 400
    for t in handler.spec.inputs:
        assert repr(t.name) in str(exc.value)


def test_no_input_is_refused_naming_both_forms(handler: Handler) -> None:
    name = handler.inputs[-1].name
    graph = repr(sorted(t.name for t in handler.spec.inputs))
    with pytest.raises(InvalidInputError, match=r"no input given; send ") as exc:
        handler.preprocess(TensorRequest({}))
    assert exc.value.status == 400 and f"send {graph} or ['{name}']" in str(exc.value)


def test_graph_inputs_alone_still_work(handler: Handler) -> None:
    item = handler.preprocess(TensorRequest(_graph_rows(handler)))
    assert handler.item_rows(item) == 1


def test_handlers_without_an_extra_input_mark_nothing_optional(tabular_cls: Path, regression: Path) -> None:
    for path in (tabular_cls, regression):
        assert not any(t.optional for t in load_handler(path, load=False).inputs)
