"""Input codecs: request payloads -> graph feeds, one codec per kind of input (image, row, text, latent).

A codec accepts either the graph's own tensors (KServe v2 clients sending what model.json
lists) or one natural extra BYTES input (``image``, ``text``), and TorchServe/OpenAI-style
bodies. Whatever came, the result is the graph's feeds, batch dimension first, so the batcher
can concatenate items from different requests.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from deepserve.handlers.base import InvalidInputError, ModelLoadError, Tensors
from deepserve.handlers.tensors import check_finite, check_names, check_tensor
from deepserve.store import (
    ImagePreprocessing,
    LatentPreprocessing,
    ModelSpec,
    TabularPreprocessing,
    TensorSpec,
    TextPreprocessing,
)


class InputCodec(ABC):
    def __init__(self, graph_inputs: list[TensorSpec]) -> None:
        self.graph_inputs = graph_inputs

    @property
    def extra_inputs(self) -> list[TensorSpec]:
        """Inputs served besides the graph's own (e.g. ``image`` BYTES)."""
        return []

    @property
    def optional_inputs(self) -> set[str]:
        """Graph inputs a client may leave out (filled in by ``complete``)."""
        return set()

    @property
    def pad_values(self) -> dict[str, int]:
        """Per input: the value that pads dim 1 when items of different lengths share a batch."""
        return {}

    def from_tensors(self, tensors: Tensors) -> Tensors:
        check_names(tensors, [*self.graph_inputs, *self.extra_inputs])
        # Exactly one form: which of two disagreeing payloads to trust is not ours to guess.
        forms = self.forms()
        given = [form for form in forms if not form.isdisjoint(tensors)]
        if len(given) == 1 and given[0] is forms[0]:
            return self.check_graph(tensors)
        if len(given) == 1:
            return self.decode_extra(tensors)
        either = " or ".join(repr(sorted(f)) for f in forms)
        if not given:
            raise InvalidInputError(f"no input given; send {either}")
        sent = sorted(tensors)
        raise InvalidInputError(f"inputs {sent} mix two forms; send {either}, not both")

    def forms(self) -> list[frozenset[str]]:
        """The input sets a request may send: the graph's own, or one extra input alone (built once:
        the signature does not change, and this runs for every request)."""
        forms: list[frozenset[str]] | None = self.__dict__.get("_forms")
        if forms is None:
            graph = frozenset(t.name for t in self.graph_inputs)
            forms = self.__dict__["_forms"] = [graph, *(frozenset({t.name}) for t in self.extra_inputs)]
        return forms

    def check_graph(self, tensors: Tensors) -> Tensors:
        names = [t.name for t in self.graph_inputs]
        missing = [n for n in names if n not in tensors and n not in self.optional_inputs]
        if missing:
            raise InvalidInputError(f"missing input(s) {missing}; the graph takes {names}")
        feeds = {t.name: check_tensor(t, tensors[t.name]) for t in self.graph_inputs if t.name in tensors}
        feeds = self.complete(feeds)
        rows = {name: a.shape[0] for name, a in feeds.items()}
        if len(set(rows.values())) > 1:
            raise InvalidInputError(f"inputs disagree on the batch dimension: {rows}")
        return feeds

    def complete(self, feeds: Tensors) -> Tensors:
        return feeds

    def decode_extra(self, tensors: Tensors) -> Tensors:
        raise InvalidInputError(f"send {[t.name for t in self.graph_inputs]}")

    @abstractmethod
    def from_payload(self, body: Any, parameters: dict[str, Any]) -> Tensors: ...


def parse_json(body: Any) -> Any:
    """A raw TorchServe body arrives as bytes; JSON text becomes its value, anything else is kept."""
    if isinstance(body, bytes | bytearray | str):
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return body
    return body


def as_rows(name: str, value: Any, width: int) -> np.ndarray:
    """A list of numbers (one row) or list of lists (rows) as float32 (n, width)."""
    try:
        array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"input {name!r} must be numbers, a row or a list of rows: {exc}") from exc
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != width or array.shape[0] == 0:
        got = list(array.shape)
        raise InvalidInputError(f"input {name!r} expects rows of {width} numbers, got shape {got}")
    return check_finite(name, array)


def codec_for(spec: ModelSpec, version_dir: Path) -> InputCodec:
    """The codec for ``spec``'s preprocessing kind (by graph input names when model.json has none)."""
    from deepserve.handlers.image import ImageCodec
    from deepserve.handlers.latent import LatentCodec
    from deepserve.handlers.tabular import TabularCodec
    from deepserve.handlers.text import TextCodec

    pre, inputs = spec.preprocessing, list(spec.inputs)
    # an imported graph's input names are the user's: only our own stores are told apart by them
    names = [t.name for t in inputs] if spec.imported_from is None else []
    if isinstance(pre, ImagePreprocessing):
        return ImageCodec(inputs, pre)
    if isinstance(pre, TextPreprocessing):
        return TextCodec(inputs, pre, version_dir)
    if isinstance(pre, LatentPreprocessing) or names == ["latent"]:
        dim = pre.latent_dim if isinstance(pre, LatentPreprocessing) else inputs[0].shape[-1]
        return LatentCodec(inputs, dim, max_n=spec.max_batch_size)
    if isinstance(pre, TabularPreprocessing) or names == ["features"]:
        return TabularCodec(inputs, pre if isinstance(pre, TabularPreprocessing) else None)
    # No preprocessing of ours (an imported graph): the graph's own tensors, by name.
    if spec.imported_from is None:
        raise ModelLoadError(f"{spec.name}: cannot tell how to decode inputs {[t.name for t in inputs]} "
                             "(no preprocessing in model.json); fix model.json or re-export")  # fmt: skip
    from deepserve.handlers.tensor_codec import TensorCodec

    return TensorCodec(inputs, batched=spec.batched)
