"""The handler contract: four verbs, batching kept outside.

A handler owns one model-store version and turns protocol payloads into tensors and back:

    load()                      open the runtime (ONNX Runtime / TorchScript / eager) for the chosen variant
    preprocess(request)         one request -> one item: a dict of numpy arrays, batch dim first
    predict_batch(items)        run several items as one batch; returns one output dict per item
    postprocess(outputs, request)  one item's outputs -> the JSON-able answer of a TorchServe/OpenAI call

The service's batcher calls ``predict_batch`` from a worker thread with items from many
requests; it never looks inside them except through ``item_rows`` / ``item_cost``. A KServe v2
client's request may itself carry several rows, so an item is "n rows", not "one row".
``predict_batch`` must return exactly ``len(items)`` results or raise
``BatchSizeMismatchError``; a failed batch is retried item by item by the batcher.

Handlers never import ``service``: errors they raise are the typed errors below, which the
service maps to HTTP / gRPC status codes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepserve.store import ModelSpec, TensorSpec

Tensors = dict[str, np.ndarray]


class HandlerError(Exception):
    """Base of the errors a handler raises; ``status`` is the HTTP status it maps to."""

    status = 500


class InvalidInputError(HandlerError):
    """The request is malformed for this model (wrong name, dtype, shape, undecodable bytes)."""

    status = 400


class BatchSizeMismatchError(HandlerError):
    """``predict_batch`` produced a different number of results than items it was given."""

    status = 500


class ModelLoadError(HandlerError):
    """The model's files are missing or corrupt, or no usable variant exists for this device."""

    status = 503


@dataclass(frozen=True)
class TensorRequest:
    """KServe v2: named tensors, batch dimension first; ``outputs`` restricts what is returned."""

    tensors: Tensors
    outputs: list[str] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PayloadRequest:
    """TorchServe- and OpenAI-style: a decoded body (bytes, str, or parsed JSON) plus parameters.

    TorchServe: ``body`` is the raw body / the multipart ``data`` field, decoded by content type.
    OpenAI embeddings: ``body`` is the list of input strings.
    """

    body: Any
    content_type: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    # the HTTP request's headers, lower-case names (TorchServe handlers read them from their context)
    headers: dict[str, str] = field(default_factory=dict)


Request = TensorRequest | PayloadRequest


class Handler(ABC):
    """Task logic for one model version. Subclasses implement the four verbs."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    # -- the signature served over KServe v2 (defaults to the graph's own) -------------------
    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self.spec.inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self.spec.outputs)

    @property
    def max_batch_size(self) -> int:
        return self.spec.max_batch_size

    # -- what the batcher may ask about an item ----------------------------------------------
    def item_rows(self, item: Tensors) -> int:
        """Rows this item adds to a batch (its batch dimension)."""
        first = next(iter(item.values()))
        return int(first.shape[0]) if first.ndim else 1

    def item_cost(self, item: Tensors) -> int:
        """Cost against a token budget; text handlers return rows x sequence length."""
        return self.item_rows(item)

    # -- the four verbs --------------------------------------------------------------------------
    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def preprocess(self, request: Request) -> Tensors: ...

    @abstractmethod
    def predict_batch(self, items: list[Tensors]) -> list[Tensors]: ...

    @abstractmethod
    def postprocess(self, outputs: Tensors, request: Request) -> Any: ...
