"""One request to one model, from admission to its last byte: ``DataPlane.call`` makes it.

Entering it looks the model up (once), admits the request to the model's queue (a full queue
refuses here, before the transport reads or decodes the body) and starts the accounting:
``requests_total{code}``, the duration histogram, the in-flight gauge the autoscaler reads and
Triton's success/fail statistics. Leaving it counts the request with the status of the error
that left it, if any.

A streamed answer outlives the transport's ``with`` block: the transport calls ``keep_open``
and the stream calls ``finish`` after its last byte, so the gauge, the duration and the code
cover the whole stream.

The operations (``infer``, ``predict``, ``embed``, ``generate``) run the handler's four verbs
around the model's batcher or generation engine; ``preprocess`` and ``postprocess`` go through
the codec stage, which keeps the slow ones off the event loop.

Observed (traces on, or the access log): the request's SERVER span covers the same time as its
duration metric and ends with its status (``service.tracing``); the access log writes one line when
it ends (``service.access_log``). What only the transport saw (method, path, trace headers, the
``x-request-id``) comes in an ``Incoming`` the transport sets with ``arriving`` before the call. A
client that leaves first (499) is logged at INFO, never as an error.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from deepserve.handlers.base import Handler, PayloadRequest, TensorRequest
from deepserve.service import access_log, tracing
from deepserve.service.codec_stage import size_kind
from deepserve.service.errors import (
    ClientClosedError,
    InvalidRequestError,
    ModelNotReadyError,
    as_deepserve_error,
)
from deepserve.service.v2_codec import InferRequest, InferResult
from deepserve.store import GenerationDefaults

if TYPE_CHECKING:
    from deepserve.service.batching import DynamicBatcher
    from deepserve.service.codec_stage import CodecStage
    from deepserve.service.engine import GenerationChunk, GenerationEngine, SamplingParams
    from deepserve.service.registry import ModelEntry, Registry

log = logging.getLogger(__name__)
UNKNOWN_MODEL = "_unknown"  # one label for every name the server does not hold: no unbounded series
MAX_TIMEOUT_S = 600.0
CLIENT_CLOSED = str(ClientClosedError.status)


@dataclass(frozen=True, slots=True)
class Incoming:
    """What the transport saw of a request, for its span and its access log line."""

    method: str  # HTTP's (gRPC calls are POSTs too)
    path: str  # the HTTP path, or the gRPC method's (/inference.GRPCInferenceService/ModelInfer)
    request_id: str | None = None  # the x-request-id header or metadata (Envoy, Istio, ingresses set one)
    carrier: Mapping[str, str] | None = None  # the trace headers (tracing.header_names) it carried
    grpc: bool = False


_incoming: contextvars.ContextVar[Incoming | None] = contextvars.ContextVar("incoming", default=None)


def arriving(incoming: Incoming) -> contextvars.Token[Incoming | None]:
    """The transport's side: the calls this task makes until ``arrived`` came in as ``incoming``."""
    return _incoming.set(incoming)


def arrived(token: contextvars.Token[Incoming | None]) -> None:
    with contextlib.suppress(ValueError):  # a stream closed from another context: nothing to undo
        _incoming.reset(token)


class Call:
    _error: BaseException | None  # these four: observed calls only (Call._observe)
    _incoming: Incoming | None
    _token: contextvars.Token[Any] | None
    request_id: str | None
    __slots__ = ("_admitted", "_error", "_incoming", "_inflight", "_label", "_observed", "_open", "_registry",
                 "_span", "_stage", "_start", "_stats", "_token", "_version", "code", "entry", "model",
                 "protocol", "request_id")  # fmt: skip

    def __init__(
        self, registry: Registry, stage: CodecStage, model: str, version: str | None, protocol: str
    ) -> None:
        self._registry, self._stage = registry, stage
        self.model, self._version, self.protocol = model, version, protocol
        self._open = self._observed = False
        self._admitted: DynamicBatcher | None = None  # the batcher counting this request
        self._span: Any = None
        self.code = "200"

    # -- accounting ------------------------------------------------------------------------------
    def __enter__(self) -> Call:
        self._start = time.perf_counter_ns()
        # looked up once: the gauge, the counters and Triton's statistics agree on one label
        self._stats = self._registry.stats_for(self.model)
        self._label = self.model if self._stats is not None else UNKNOWN_MODEL
        self._inflight = self._registry.metrics.inflight_child(self._label)
        self._inflight.inc()
        if tracing.active or self._registry.settings.access_log:  # both off (the default): no more work
            self._observe()
        try:
            self.entry: ModelEntry = self._registry.get(self.model, self._version)
            if self.entry.batcher is not None:
                self.entry.batcher.arrive()
                self._admitted = self.entry.batcher
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._span is not None and self._token is not None:
            tracing.leave(self._token)
            self._token = None
        if exc is not None:
            self.code = str(as_deepserve_error(exc).status)
            self._open = False
            if self._observed:
                self._error = exc
        elif self._open:
            return  # the stream finishes it
        self._count()

    def keep_open(self) -> None:
        """The answer is a stream: the request ends at ``finish``, not when the transport's block does."""
        self._open = True

    def finish(self) -> None:
        if self._open:
            self._open = False
            self._count()

    def _count(self) -> None:
        elapsed = time.perf_counter_ns() - self._start
        self._inflight.dec()
        if self._admitted is not None:
            self._admitted.leave()
        counter, histogram = self._registry.metrics.request_children(self._label, self.protocol, self.code)
        counter.inc()
        histogram.observe(elapsed / 1e9)
        if self._stats is not None:
            self._stats.durations["success" if self.code == "200" else "fail"].add(elapsed)
        if self._observed:
            self._report(elapsed)
        elif self.code == CLIENT_CLOSED:
            self._left(elapsed)

    # -- traces and the access log ---------------------------------------------------------------
    def _observe(self) -> None:
        self._observed = True
        self._error = None
        self._token = None
        incoming = self._incoming = _incoming.get()
        self.request_id = incoming.request_id if incoming is not None else None
        if tracing.active:
            name = f"{self.protocol} {self._label}"
            attributes = tracing.request_attributes(self.model, self.protocol, incoming)
            span = tracing.start_request(name, incoming.carrier if incoming else None, attributes)
            if span.is_recording():  # not sampled: nothing to add to it, no children, nothing to end
                self._span, self._token = span, tracing.enter(span)

    def _operation(self, name: str) -> None:
        """The span's name says what the request does, once the transport calls it."""
        if self._span is not None:
            self._span.update_name(f"{self.protocol} {name} {self._label}")

    def _report(self, elapsed: int) -> None:
        incoming, trace_id = self._incoming, None
        if self._span is not None:
            status, version = int(self.code), str(self.entry.version) if hasattr(self, "entry") else None
            outcome = tracing.outcome_attributes(incoming, status, self._error, self.request_id, version)
            tracing.end_request(self._span, status >= 500, self._error, outcome)
            trace_id = tracing.ids(self._span)[0]
        if self._registry.settings.access_log:  # its line says 499 for a client that left
            method, path = (incoming.method, incoming.path) if incoming is not None else ("-", "-")
            access_log.write(method, path, self.protocol, self.model, int(self.code), elapsed / 1e6,
                             self.request_id, trace_id)  # fmt: skip
        elif self.code == CLIENT_CLOSED:
            self._left(elapsed)

    def _left(self, elapsed: int) -> None:
        """A client that disconnects or cancels its call is no server error: INFO, one line."""
        incoming = self._incoming if self._observed else None
        where = f"{incoming.method} {incoming.path}, " if incoming is not None else ""
        log.info("client went away before the answer (%smodel %s, %s, after %.1f ms)", where, self.model,
                 self.protocol, elapsed / 1e6)  # fmt: skip

    # -- operations ------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return str(self.entry.version)

    @property
    def handler(self) -> Handler:
        handler = self.entry.handler
        assert handler is not None  # a ready entry has one
        return handler

    @property
    def generation_defaults(self) -> GenerationDefaults | None:
        """The model's own sampling defaults (model.json ``generation``); None for user code without them."""
        defaults = getattr(self.handler, "defaults", None)
        return defaults if isinstance(defaults, GenerationDefaults) else None

    @property
    def _batcher(self) -> DynamicBatcher:
        batcher = self.entry.batcher
        assert batcher is not None
        return batcher

    async def infer(self, request: InferRequest, deadline_s: float | None = None) -> InferResult:
        """KServe v2. ``deadline_s``: the transport's own deadline (gRPC's), which caps the timeout."""
        handler, batcher = self.handler, self._batcher
        tensors = TensorRequest(request.tensors, request.outputs, request.parameters)
        timeout = _timeout(request.parameters, batcher.default_timeout)
        if deadline_s is not None:
            timeout = min(timeout, deadline_s)
        kind = _tensor_kind(request.tensors)
        if self._observed:
            self._operation("infer")
            self.request_id = self.request_id or request.id  # KServe v2's (Triton's) request id
        t0 = time.perf_counter_ns()
        item = await self._stage.run(self._cost("pre", kind), handler.preprocess, tensors)
        t1 = time.perf_counter_ns()
        outputs = await batcher.submit(item, timeout=timeout)
        t2 = time.perf_counter_ns()
        served = await self._stage.run(self._cost("post", kind), handler.postprocess, outputs, tensors)
        if not isinstance(served, dict):  # a handler whose postprocess answers in JSON only
            served = _select_outputs(self.model, handler, outputs, request.outputs)
        self.entry.stats.add_io_time(t1 - t0, time.perf_counter_ns() - t2)
        return InferResult(self.model, self.version, served, request.id)

    async def predict(
        self, body: Any, content_type: str | None, parameters: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> Any:
        """TorchServe-style: a decoded body through preprocess -> batch -> postprocess."""
        self._operation("predict")
        request = PayloadRequest(body, content_type, parameters, headers or {})
        kind = size_kind("payload", len(body)) if isinstance(body, (bytes, str)) else "payload"
        outputs, _ = await self._payload(request, kind)
        post = self._cost("post", kind)
        return await self._stage.run(post, self.handler.postprocess, outputs, request)

    async def embed(self, inputs: list[Any]) -> tuple[np.ndarray, int]:
        """OpenAI-style embeddings: (N, D) float32 vectors and the prompt-token count."""
        handler = self.handler
        self._operation("embed")
        if handler.spec.task != "embedding":
            raise InvalidRequestError(f"model {self.model!r} is not an embedding model (its task: "
                                      f"{handler.spec.task})")  # fmt: skip
        request = PayloadRequest(inputs, "application/json", {})
        outputs, item = await self._payload(request, "texts")
        answer = await self._stage.run(self._cost("post", "texts"), handler.postprocess, outputs, request)
        vectors = _vectors(answer, outputs)
        if vectors.shape[0] != len(inputs):
            raise as_deepserve_error(
                RuntimeError(f"{self.model}: {len(inputs)} inputs gave {vectors.shape[0]} vectors")
            )
        mask = item.get("attention_mask")
        return vectors, int(mask.sum()) if mask is not None else 0

    async def _payload(self, request: PayloadRequest, kind: str) -> tuple[dict[str, np.ndarray], Any]:
        item = await self._stage.run(self._cost("pre", kind), self.handler.preprocess, request)
        return await self._batcher.submit(item), item

    def _cost(self, step: str, kind: str) -> Any:
        return self._stage.cost(self.model, step, kind)

    # -- generation ------------------------------------------------------------------------------
    @property
    def engine(self) -> GenerationEngine:
        handler = self.entry.handler
        if handler is not None and handler.spec.task != "text-generation":
            raise InvalidRequestError(f"model {self.model!r} cannot generate text (its task: "
                                      f"{handler.spec.task})")  # fmt: skip
        engine = self.entry.engine
        if engine is None:
            raise ModelNotReadyError(f"model {self.model!r} has no generation engine running; see the "
                                     "server log")  # fmt: skip
        return engine  # type: ignore[no-any-return]

    @property
    def generates(self) -> bool:
        """True for a model whose answers are generated token by token (and streamed)."""
        return self.entry.engine is not None

    async def tokenize(self, prompt: str) -> list[int]:
        """The prompt's token ids, through the codec stage (a long prompt takes milliseconds)."""
        engine = self.engine
        return await self._stage.run(self._cost("tokenize", "text"), engine.encode, prompt)

    def generate(
        self, prompt: str | list[int], params: SamplingParams
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Chunks from the model's continuous-batching engine; ``prompt`` as text or ``tokenize``'s ids."""
        self._operation("generate")
        return self.engine.generate(prompt, params)

    def decode_tokens(self, ids: list[int]) -> str:
        """A prompt sent as token ids, in the model's own tokenizer."""
        self.engine  # noqa: B018 - the same refusals as generate for a model that cannot generate
        decode = getattr(self.handler, "decode", None)
        if decode is None:
            raise InvalidRequestError(f"model {self.model!r} takes text prompts only")
        return str(decode(ids))


def _tensor_kind(tensors: dict[str, np.ndarray]) -> str:
    """Numeric tensors cost little to check; BYTES inputs (encoded images, texts) cost by size."""
    payloads = [a for a in tensors.values() if a.dtype == object]
    if not payloads:
        return "tensor"
    nbytes = sum(len(v) for a in payloads for v in a.ravel() if isinstance(v, (bytes, str)))
    return size_kind("bytes", nbytes)


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


def _select_outputs(
    name: str, handler: Handler, outputs: dict[str, np.ndarray], wanted: list[str] | None
) -> dict[str, np.ndarray]:
    order = [t.name for t in handler.outputs if t.name in outputs] or list(outputs)
    if wanted is None:
        return {n: outputs[n] for n in order}
    unknown = [w for w in wanted if w not in outputs]
    if unknown:
        raise InvalidRequestError(f"model {name!r} has no output {unknown[0]!r}; outputs: {', '.join(order)}")
    return {n: outputs[n] for n in wanted}


def _vectors(result: Any, outputs: dict[str, np.ndarray]) -> np.ndarray:
    if isinstance(result, dict):
        result = result.get("embeddings", result.get("data", next(iter(outputs.values()))))
    array = np.asarray(result, dtype=np.float32)
    return array.reshape(1, -1) if array.ndim == 1 else array
