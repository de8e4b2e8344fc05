"""The transport-independent data plane: every HTTP route and gRPC method calls one of these.

Transports decode their wire format into plain values, call a function here, and encode the
result; errors are ``DeepserveError``s, mapped once per transport. Request metrics and the
Triton success/fail statistics are recorded by ``RequestTracker`` (transports wrap each
request in one), queue/compute metrics by the batcher.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import numpy as np

from deepserve.handlers.base import PayloadRequest, TensorRequest
from deepserve.service.errors import InvalidRequestError, ModelNotReadyError, as_deepserve_error
from deepserve.service.registry import ModelEntry, Registry
from deepserve.service.v2_codec import InferRequest, InferResult

SERVER_NAME = "deepserve"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository", "statistics", "parameters"]
MAX_TIMEOUT_S = 600.0
_PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch", "pt2": "pytorch_torch_export"}


class RequestTracker:
    """Counts one request: requests_total{code}, duration, in-flight, Triton success/fail.

    A streamed answer outlives the route's ``with`` block: the route calls ``keep_open`` and the
    stream calls ``finish`` after its last byte, so the gauge, the duration and the code cover
    the whole stream.
    """

    __slots__ = ("_inflight", "_model", "_open", "_protocol", "_registry", "_start", "code")

    def __init__(self, registry: Registry, model: str, protocol: str) -> None:
        self._registry = registry
        self._model = model
        self._protocol = protocol
        self._open = False
        self.code = "200"

    def __enter__(self) -> RequestTracker:
        self._start = time.perf_counter_ns()
        known = self._registry.stats_for(self._model) is not None
        self._inflight = self._registry.metrics.inflight_child(self._model if known else "_unknown")
        self._inflight.inc()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self.code = str(as_deepserve_error(exc).status)
            self._open = False
        elif self._open:
            return  # the stream finishes it
        self._count()

    def keep_open(self) -> None:
        """The answer is a stream: the request ends at ``finish``, not when the route returns."""
        self._open = True

    def finish(self) -> None:
        if self._open:
            self._open = False
            self._count()

    def _count(self) -> None:
        elapsed = time.perf_counter_ns() - self._start
        self._inflight.dec()
        # unknown names share one label so random names cannot grow the metric without bound
        stats = self._registry.stats_for(self._model)
        label = self._model if stats is not None else "_unknown"
        counter, histogram = self._registry.metrics.request_children(label, self._protocol, self.code)
        counter.inc()
        histogram.observe(elapsed / 1e9)
        if stats is not None:
            stats.durations["success" if self.code == "200" else "fail"].add(elapsed)


# -- server and model metadata -----------------------------------------------------------------
def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}


def platform(entry: ModelEntry) -> str:
    variant = getattr(entry.handler, "variant", None)
    return _PLATFORMS.get(getattr(variant, "format", ""), "python")


def model_metadata(registry: Registry, name: str, version: str | None = None) -> dict[str, Any]:
    entry = registry.get(name, version)
    handler = entry.handler
    assert handler is not None
    return {
        "name": name,
        "versions": [str(v) for v in registry.versions(name)],
        "platform": platform(entry),
        "inputs": [t.model_dump() for t in handler.inputs],
        "outputs": [t.model_dump() for t in handler.outputs],
    }


def model_ready(registry: Registry, name: str, version: str | None = None) -> bool:
    return registry.find(name, version).ready


def model_config(registry: Registry, name: str, version: str | None = None) -> dict[str, Any]:
    """Triton ModelConfig as JSON (protocols.md 3.2): dims exclude the batch dimension."""
    entry = registry.get(name, version)
    assert entry.handler is not None and entry.batcher is not None

    def tensor(t: Any) -> dict[str, Any]:
        datatype = "TYPE_STRING" if t.datatype == "BYTES" else f"TYPE_{t.datatype}"
        return {"name": t.name, "data_type": datatype, "dims": list(t.shape[1:])}

    s = registry.settings
    return {
        "name": name,
        "platform": platform(entry),
        "backend": "deepserve",
        "version_policy": {"latest": {"num_versions": len(registry.versions(name))}},
        "max_batch_size": entry.batcher.max_batch_size,
        "input": [tensor(t) for t in entry.handler.inputs],
        "output": [tensor(t) for t in entry.handler.outputs],
        "dynamic_batching": {
            "preferred_batch_size": s.preferred_batch_sizes,
            "max_queue_delay_microseconds": int(s.max_queue_delay_ms * 1000),
        },
        "model_transaction_policy": {"decoupled": False},
        "parameters": {"task": {"string_value": entry.handler.spec.task}},
    }


def statistics(registry: Registry, name: str | None = None, version: str | None = None) -> dict[str, Any]:
    if name is None:
        entries = [e for e in registry.entries() if e.ready]
    elif version in (None, ""):
        entries = [registry.find(name, v) for v in registry.versions(name)] or [registry.find(name)]
    else:
        entries = [registry.find(name, version)]
    return {"model_stats": [e.stats.as_json() for e in entries]}


# -- inference -------------------------------------------------------------------------------
def admit(registry: Registry, name: str, version: str | None = None) -> None:
    """Shed before decoding: an unknown model, or one whose queue is full or closing, is refused
    before the transport reads and decodes the body (``DynamicBatcher.admit``)."""
    batcher = registry.get(name, version).batcher
    if batcher is not None:
        batcher.admit()


def _timeout(parameters: dict[str, Any], default: float) -> float:
    """Triton's reserved ``timeout`` parameter is in microseconds."""
    value = parameters.get("timeout")
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise InvalidRequestError(
            f"parameter 'timeout' must be a positive number of microseconds, got {value!r}"
        )
    return min(float(value) / 1e6, MAX_TIMEOUT_S)


async def infer(
    registry: Registry, name: str, version: str | None, request: InferRequest, deadline_s: float | None = None
) -> InferResult:
    """``deadline_s``: the transport's own deadline (gRPC's), which caps the request's timeout."""
    entry = registry.get(name, version)
    handler, batcher = entry.handler, entry.batcher
    assert handler is not None and batcher is not None
    tensor_request = TensorRequest(request.tensors, request.outputs, request.parameters)
    timeout = _timeout(request.parameters, batcher.default_timeout)
    if deadline_s is not None:
        timeout = min(timeout, deadline_s)
    t0 = time.perf_counter_ns()
    item = handler.preprocess(tensor_request)
    t1 = time.perf_counter_ns()
    outputs = await batcher.submit(item, timeout=timeout)
    t2 = time.perf_counter_ns()
    served = handler.postprocess(outputs, tensor_request)  # v2: the served tensors, restricted
    if not isinstance(served, dict):  # a handler whose postprocess answers in JSON only
        served = _select_outputs(name, handler.outputs, outputs, request.outputs)
    entry.stats.add_io_time(t1 - t0, time.perf_counter_ns() - t2)
    return InferResult(name, str(entry.version), served, request.id)


def _select_outputs(
    name: str, served: list[Any], outputs: dict[str, np.ndarray], wanted: list[str] | None
) -> dict[str, np.ndarray]:
    order = [t.name for t in served if t.name in outputs] or list(outputs)
    if wanted is None:
        return {n: outputs[n] for n in order}
    unknown = [w for w in wanted if w not in outputs]
    if unknown:
        raise InvalidRequestError(f"model {name!r} has no output {unknown[0]!r}; outputs: {', '.join(order)}")
    return {n: outputs[n] for n in wanted}


async def predict(
    registry: Registry, name: str, version: str | None, body: Any, content_type: str | None,
    parameters: dict[str, Any] | None = None,
) -> Any:  # fmt: skip
    """TorchServe-style: a decoded body through preprocess -> batch -> postprocess."""
    entry = registry.get(name, version)
    handler, batcher = entry.handler, entry.batcher
    assert handler is not None and batcher is not None
    request = PayloadRequest(body, content_type, parameters or {})
    item = handler.preprocess(request)
    outputs = await batcher.submit(item)
    return handler.postprocess(outputs, request)


async def embed(registry: Registry, name: str, inputs: list[Any]) -> tuple[np.ndarray, int]:
    """OpenAI-style embeddings: (N, D) float32 vectors and the prompt-token count."""
    entry = registry.get(name)
    handler, batcher = entry.handler, entry.batcher
    assert handler is not None and batcher is not None
    if handler.spec.task != "embedding":
        raise InvalidRequestError(f"model {name!r} is not an embedding model (its task: {handler.spec.task})")
    batcher.admit()  # a full queue refuses before the tokenizer runs
    request = PayloadRequest(inputs, "application/json", {})
    item = handler.preprocess(request)
    outputs = await batcher.submit(item)
    vectors = _vectors(handler.postprocess(outputs, request), outputs)
    if vectors.shape[0] != len(inputs):
        raise as_deepserve_error(
            RuntimeError(f"{name}: {len(inputs)} inputs gave {vectors.shape[0]} vectors")
        )
    mask = item.get("attention_mask")
    tokens = int(mask.sum()) if mask is not None else 0
    return vectors, tokens


def _vectors(result: Any, outputs: dict[str, np.ndarray]) -> np.ndarray:
    if isinstance(result, dict):
        result = result.get("embeddings", result.get("data", next(iter(outputs.values()))))
    array = np.asarray(result, dtype=np.float32)
    return array.reshape(1, -1) if array.ndim == 1 else array


def generation_entry(registry: Registry, name: str) -> ModelEntry:
    entry = registry.get(name)
    if entry.handler is not None and entry.handler.spec.task != "text-generation":
        raise InvalidRequestError(
            f"model {name!r} cannot generate text (its task: {entry.handler.spec.task})"
        )
    if entry.engine is None:
        raise ModelNotReadyError(f"model {name!r} has no generation engine running; see the server log")
    return entry


async def generate(registry: Registry, name: str, prompt: str, params: Any) -> AsyncIterator[Any]:
    """Chunks from the model's continuous-batching engine (``service.engine.GenerationChunk``)."""
    engine = generation_entry(registry, name).engine
    async for chunk in engine.generate(prompt, params):
        yield chunk


def count_tokens(registry: Registry, name: str, prompt: str) -> int:
    return int(generation_entry(registry, name).engine.count_tokens(prompt))


# -- repository --------------------------------------------------------------------------------
def repository_index(registry: Registry, ready_only: bool = False) -> list[dict[str, str]]:
    return registry.index(ready_only)


async def load_model(registry: Registry, name: str) -> None:
    entries = await registry.load(name)
    failed = [e for e in entries if e.state == "failed"]
    if failed:
        raise ModelNotReadyError(f"model {name!r} failed to load: {failed[0].reason}")


async def unload_model(registry: Registry, name: str) -> None:
    await registry.unload(name)
