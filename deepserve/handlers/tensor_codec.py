"""Tensors in, for models without preprocessing of ours (imported graphs): the graph's inputs only.

KServe v2 requests send the graph's inputs by name. TorchServe-style JSON bodies send them as
nested lists:

    {"x": [[0.1, 0.2, 0.3, 0.4]], "mask": [[1, 1, 0, 0]]}    every input, by name
    [[0.1, 0.2, 0.3, 0.4]]                                   a graph with one input: the tensor alone

A graph with a batch axis also takes a single row without it (``[0.1, 0.2, 0.3, 0.4]`` for
``[-1, 4]``). A graph without one (model.json ``max_batch_size`` 0) takes each tensor whole, at
the shape model.json lists (a scalar included); its inputs need not agree on a first dimension.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepserve.handlers.base import InvalidInputError, Tensors
from deepserve.handlers.codec import InputCodec, parse_json
from deepserve.handlers.tensors import check_tensor, describe
from deepserve.store import TensorSpec


class TensorCodec(InputCodec):
    def __init__(self, graph_inputs: list[TensorSpec], *, batched: bool) -> None:
        super().__init__(graph_inputs)
        self.batched = batched
        self._optional = {t.name for t in graph_inputs if t.optional}  # inputs with a default in the graph

    @property
    def optional_inputs(self) -> set[str]:
        return self._optional

    def check_graph(self, tensors: Tensors) -> Tensors:
        if self.batched:
            return super().check_graph(tensors)
        names = [t.name for t in self.graph_inputs]
        missing = [n for n in names if n not in tensors and n not in self._optional]
        if missing:
            raise InvalidInputError(f"missing input(s) {missing}; the graph takes {names}")
        return {t.name: check_whole(t, tensors[t.name]) for t in self.graph_inputs if t.name in tensors}

    def from_payload(self, body: Any, parameters: dict[str, Any]) -> Tensors:
        body = parse_json(body)
        names = [t.name for t in self.graph_inputs]
        if len(names) == 1 and isinstance(body, list | int | float | bool):
            body = {names[0]: body}
        if not isinstance(body, dict) or not body:
            one = " (or, with its one input, the nested list alone)" if len(names) == 1 else ""
            raise InvalidInputError(
                f"send a JSON object {{input name: nested list}} with the inputs {names}{one}"
            )
        specs = {t.name: t for t in self.graph_inputs}
        return self.from_tensors(
            {name: self.array(specs.get(name), name, value) for name, value in body.items()}
        )

    def array(self, spec: TensorSpec | None, name: str, value: Any) -> np.ndarray:
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as exc:  # ragged nested lists
            raise InvalidInputError(
                f"input {name!r} is not a rectangular nested list of numbers: {exc}"
            ) from exc
        if array.dtype == object:
            raise InvalidInputError(f"input {name!r} is not a rectangular nested list of numbers")
        if spec is not None and self.batched and array.ndim == len(spec.shape) - 1:
            array = array[None]  # one row sent without its batch axis
        return array


def check_whole(spec: TensorSpec, value: Any) -> np.ndarray:
    """``check_tensor`` for a graph without a batch axis: the shape is the whole tensor, a scalar allowed."""
    if spec.shape:
        return check_tensor(spec, value)
    array = np.asarray(value)
    try:
        if array.ndim != 0:
            raise InvalidInputError("not a scalar")
        return check_tensor(spec.model_copy(update={"shape": [1]}), array.reshape(1)).reshape(())
    except InvalidInputError:
        raise InvalidInputError(
            f"input {spec.name!r} expects {describe(spec)} (a scalar), got "
            f"{array.dtype} array of shape {list(array.shape)}"
        ) from None
