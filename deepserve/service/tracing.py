"""OpenTelemetry traces: off unless the standard ``OTEL_*`` variables ask for them.

``configure`` runs once, in the process entry point (``logs.configure_logging`` calls it). Traces are
on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) or, with it unset, when an
OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); off
with ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``. The rest the SDK reads itself, as
it defines them: the endpoint, headers, TLS, timeout and compression (the OTLP/gRPC exporter), the
``OTEL_BSP_*`` batch settings, ``OTEL_TRACES_SAMPLER`` (+ ``_ARG``), ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` (``service.name`` is ``deepserve`` unless they name one), and
``OTEL_PROPAGATORS`` (which headers carry the caller's context: W3C ``traceparent`` by default).

The spans of one request (a trace of its own, or a child of the caller's ``traceparent``):

- ``<protocol> <operation> <model>`` (SERVER), from admission to the last byte (``service.call``);
- ``queue wait``: in the model's queue (``service.batching``), or waiting for a sequence slot
  (``service.engine``);
- ``batch execution``: the batch the request ran in, one span per request with the batch's
  size and id as attributes (a batch serves several traces);
- ``time to first token`` (generation): from the request's arrival to its first token.

The hot path: ``active`` stays False until traces are on, and request code checks it first, so a
request pays one attribute load with tracing off (an OpenTelemetry no-op span costs microseconds).
The opentelemetry packages (the ``tracing`` extra) are imported only once traces are on.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deepserve import __version__ as SERVER_VERSION

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

    from deepserve.service.call import Incoming

log = logging.getLogger(__name__)
EXPORTERS = ("otlp", "console")
DEFAULT_SERVICE_NAME = "deepserve"
Attributes = Mapping[str, str | int | float | bool]

active = False  # traces are on: the one check request code makes
_otel: _Otel | None = None
# the span of the request this task serves: the parent of the spans its model work makes, and the
# trace id of its log lines. Our own variable, not OpenTelemetry's current context, so a request
# left in another context (a stream closed by the garbage collector) is reset without an error line
_current: contextvars.ContextVar[Span | None] = contextvars.ContextVar("deepserve_span", default=None)


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for traces this server cannot send."""


# -- turning it on ---------------------------------------------------------------------------------
def exporters_wanted(environ: Mapping[str, str]) -> list[str]:
    """The exporters the variables ask for; empty: traces off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not named:
        endpoints = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if any(environ.get(v, "").strip() for v in endpoints) else []
    names = [n.strip() for n in named.split(",") if n.strip()]
    if "none" in names:
        return []
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER={named}: {unknown[0]!r} is not an exporter this "
                                 f"server has; use {', '.join(EXPORTERS)} or none")  # fmt: skip
    return list(dict.fromkeys(names))


def configure(environ: Mapping[str, str]) -> bool:
    """Turn traces on when ``environ`` asks for them (the module docstring); True when on.
    Sets OpenTelemetry's global tracer provider, so a handler's own spans go the same way."""
    if active:
        return True
    provider = build_provider(environ)
    if provider is None:
        return False
    from opentelemetry import trace

    trace.set_tracer_provider(provider)
    use(provider)
    where = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    exporters = environ.get("OTEL_TRACES_EXPORTER") or "otlp"
    log.info("traces on: %s%s", exporters, f" to {where}" if where else "")
    return True


def build_provider(environ: Mapping[str, str]) -> TracerProvider | None:
    """The tracer provider ``environ`` asks for, batching spans to its exporters; None: traces off."""
    exporters = exporters_wanted(environ)
    if not exporters:
        return None
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TracingConfigError(f"the OTEL_* variables ask for traces, but {exc.name} is not installed: "
                                 "pip install 'deepserve[tracing]'") from None  # fmt: skip
    provider = TracerProvider(resource=_resource())
    for name in exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, environ)))
    return provider


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if (protocol or "grpc").strip().lower() != "grpc":
        raise TracingConfigError(f"OTLP protocol {protocol!r}: this server sends OTLP over gRPC only; set "
                                 "OTEL_EXPORTER_OTLP_PROTOCOL=grpc (a collector's port 4317)")  # fmt: skip
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise TracingConfigError("OTLP traces need opentelemetry-exporter-otlp-proto-grpc: pip install "
                                 "'deepserve[tracing]'") from None  # fmt: skip
    return OTLPSpanExporter()  # endpoint, headers, TLS, timeout: from the OTEL_EXPORTER_OTLP_* variables


def _resource() -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource

    resource = Resource.create({SERVICE_VERSION: SERVER_VERSION})  # + OTEL_SERVICE_NAME, _RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):  # the SDK's fallback
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def use(provider: TracerProvider, propagator: TextMapPropagator | None = None) -> None:
    """Send the request spans to ``provider`` from now on (``configure``; tests pass their own)."""
    global active, _otel
    _otel = _Otel(provider, propagator)
    active = True


def stop() -> None:
    """Traces off again (tests); the provider is left to its owner to shut down."""
    global active, _otel
    active, _otel = False, None


def header_names() -> frozenset[str]:
    """The lower-case header names the propagator reads (traceparent, tracestate, baggage by
    default); empty while traces are off. Transports collect these for ``start_request``."""
    return _otel.fields if _otel is not None else frozenset()


class _Otel:
    """What the span functions need, imported once traces are on."""

    def __init__(self, provider: TracerProvider, propagator: TextMapPropagator | None) -> None:
        from opentelemetry import propagate, trace

        self.tracer = provider.get_tracer("deepserve", SERVER_VERSION)
        self.propagator = propagator if propagator is not None else propagate.get_global_textmap()
        self.fields = frozenset(f.lower() for f in self.propagator.fields)
        self.in_context = trace.set_span_in_context
        self.server = trace.SpanKind.SERVER
        self.Status, self.error = trace.Status, trace.StatusCode.ERROR


# -- spans -----------------------------------------------------------------------------------------
def start_request(name: str, carrier: Mapping[str, str] | None, attributes: Attributes) -> Span:
    """The SERVER span of one request; a child of the caller's span when ``carrier`` (its headers
    or gRPC metadata, lower-case names) holds one."""
    assert _otel is not None
    parent = _otel.propagator.extract(carrier) if carrier else None
    return _otel.tracer.start_span(name, context=parent, kind=_otel.server, attributes=attributes)


def end_request(span: Span, failed: bool, error: BaseException | None, attributes: Attributes) -> None:
    """``failed``: the server's fault (a 5xx), ERROR status with the exception recorded."""
    span.set_attributes(attributes)
    if failed and _otel is not None:  # None: turned off while the request ran (tests)
        span.set_status(_otel.Status(_otel.error, str(error) if error is not None else None))
        if error is not None:
            span.record_exception(error)
    span.end()


def request_attributes(model: str, protocol: str, incoming: Incoming | None) -> dict[str, Any]:
    """A request span's attributes at its start: OpenTelemetry's HTTP or RPC ones, and ours."""
    attributes: dict[str, Any] = {"deepserve.model": model, "deepserve.protocol": protocol}
    if incoming is not None and incoming.grpc:
        service, _, method = incoming.path.strip("/").partition("/")
        attributes |= {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
    elif incoming is not None:
        attributes |= {"http.request.method": incoming.method, "url.path": incoming.path}
    return attributes


def outcome_attributes(
    incoming: Incoming | None, status: int, error: BaseException | None, request_id: str | None,
    version: str | None,
) -> dict[str, Any]:  # fmt: skip
    """At its end: ``status`` as the metrics count it (a stream's mid-stream error included), the
    gRPC code for gRPC calls, the request id and the model version that served it."""
    from deepserve.service.errors import as_deepserve_error

    attributes: dict[str, Any] = {"deepserve.status_code": status}
    if request_id is not None:
        attributes["deepserve.request_id"] = request_id
    if version is not None:
        attributes["deepserve.model.version"] = version
    if incoming is not None and incoming.grpc:
        attributes["rpc.grpc.status_code"] = as_deepserve_error(error).grpc_code.value[0] if error else 0
    elif incoming is not None:
        attributes["http.response.status_code"] = status
    return attributes


def enter(span: Span) -> contextvars.Token[Span | None]:
    """``span`` is the current request's until ``leave``."""
    return _current.set(span)


def leave(token: contextvars.Token[Span | None]) -> None:
    # left in another context than it entered (see _current): there is nothing to undo
    with contextlib.suppress(ValueError):
        _current.reset(token)


def current() -> Span | None:
    return _current.get()


def ids(span: Span) -> tuple[str, str]:
    """(trace id, span id) in the W3C form, as log lines carry them."""
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


@dataclass(eq=False, slots=True)
class Waiting:
    """A request handed to a model (its queue, its generation engine): its span as the parent of
    the spans that work makes, and when it arrived."""

    parent: Context
    since_ns: int
    ran: bool = False  # its queue wait is recorded


def waiting() -> Waiting | None:
    """The current request's ``Waiting`` from now, or None when no recorded span is current."""
    span = _current.get()
    if span is None or _otel is None or not span.is_recording():
        return None
    return Waiting(_otel.in_context(span), time.time_ns())


def record(
    name: str, parent: Context, start_ns: int, end_ns: int, attributes: Attributes,
    error: BaseException | None = None,
) -> None:  # fmt: skip
    """A finished child span (times in ``time.time_ns``), made after the fact from what was measured."""
    if _otel is None:  # turned off meanwhile
        return
    span = _otel.tracer.start_span(name, context=parent, attributes=attributes, start_time=start_ns)
    if error is not None:
        span.set_status(_otel.Status(_otel.error, str(error)))
        span.record_exception(error)
    span.end(end_time=end_ns)


def record_since(trace: Waiting, name: str, attributes: Attributes) -> None:
    """A child span of ``trace``'s request from its arrival to now."""
    record(name, trace.parent, trace.since_ns, time.time_ns(), attributes)
