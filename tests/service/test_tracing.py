"""OpenTelemetry traces: one trace per request, its SERVER span and the child spans of its model work,
the caller's ``traceparent`` over HTTP and gRPC, off by default; and once through the real OTLP/gRPC
exporter into a receiver that implements the OTLP TraceService, as a collector would."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import pytest_asyncio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from deepserve.handlers.base import Tensors
from deepserve.handlers.generation import TextGenerationHandler
from deepserve.service import tracing
from deepserve.service.dataplane import DataPlane
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings
from tests.service.fakes import SumHandler, asgi_client, make_spec
from tests.service.grpc_env import HeldSum, free_port, serving
from tests.service.test_engine import ScriptRuntime, gpt_spec

CALLER_TRACE, CALLER_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
REPO = Path(__file__).resolve().parents[2]


def _v2(rows: list[list[float]], request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "x", "shape": [len(rows), 3], "datatype": "FP32",
                                        "data": [v for r in rows for v in r]}]}  # fmt: skip
    return body | ({"id": request_id} if request_id else {})


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.stop()
        provider.shutdown()


@dataclass
class Served:
    client: httpx.AsyncClient
    sum: HeldSum


@pytest_asyncio.fixture(loop_scope="function")
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """HTTP in-process: "sum" (the fake batch model), "buggy" (its every batch fails) and "tiny-gpt"
    (the real generation engine over a scripted runtime)."""
    settings = Settings(model_store=tmp_path, max_queue_delay_ms=0)
    registry = Registry(settings, Metrics(CollectorRegistry()))
    summer = HeldSum()
    await registry.add_handler(summer)
    await registry.add_handler(BuggySum(make_spec("buggy")))
    await registry.add_handler(TextGenerationHandler.with_runtime(gpt_spec(), ScriptRuntime(b"hello world")))
    plane = DataPlane(settings, registry)
    async with asgi_client(plane) as (client, _):
        yield Served(client, summer)


def _by_trace(finished: tuple[ReadableSpan, ...]) -> dict[int, list[ReadableSpan]]:
    traces: dict[int, list[ReadableSpan]] = {}
    for span in finished:
        assert span.context is not None
        traces.setdefault(span.context.trace_id, []).append(span)
    return traces


def _tree(spans: list[ReadableSpan]) -> tuple[ReadableSpan, dict[str, list[ReadableSpan]]]:
    """The trace's one SERVER span, and its children by name (every other span must be one)."""
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert server.context is not None
    children: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        if span is not server:
            assert span.parent is not None and span.parent.span_id == server.context.span_id, span.name
            children.setdefault(span.name, []).append(span)
    return server, children


def _within(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert None not in (child.start_time, child.end_time, parent.start_time, parent.end_time)
    return parent.start_time <= child.start_time <= child.end_time <= parent.end_time  # type: ignore[operator]


# -- one trace per request ---------------------------------------------------------------------
async def test_each_request_is_one_trace_with_its_queue_wait_and_batch_execution(
    served: Served, spans: InMemorySpanExporter
) -> None:
    """The model held on a first request, two more queue behind it and run as one batch: each of the
    three is a trace of its own, and the two batched ones share the batch's id in their spans."""
    served.sum.release.clear()
    first = asyncio.create_task(served.client.post("/v2/models/sum/infer", json=_v2([[1, 2, 3]], "r0")))
    assert await asyncio.to_thread(served.sum.entered.wait, 5)  # the first batch is in the model
    rest = [asyncio.create_task(served.client.post("/v2/models/sum/infer", json=_v2([[i, 0, 0]], f"r{i}"),
                                                   headers={"x-request-id": f"ingress-{i}"}))
            for i in (1, 2)]  # fmt: skip
    await asyncio.sleep(0.1)
    served.sum.release.set()
    answers = await asyncio.gather(first, *rest)
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert served.sum.batches == [1, 2]

    traces = _by_trace(spans.get_finished_spans())
    assert len(traces) == 3
    batch_ids = {}
    for trace in traces.values():
        server, children = _tree(trace)
        assert server.name == "v2-http infer sum"
        assert sorted(children) == ["batch execution", "queue wait"]
        assert len(children["queue wait"]) == len(children["batch execution"]) == 1
        assert all(_within(c[0], server) for c in children.values())
        attrs = dict(server.attributes or {})
        assert attrs["deepserve.model"] == "sum" and attrs["deepserve.model.version"] == "1"
        assert attrs["deepserve.protocol"] == "v2-http" and attrs["http.request.method"] == "POST"
        assert attrs["url.path"] == "/v2/models/sum/infer" and attrs["http.response.status_code"] == 200
        assert server.status.status_code == StatusCode.UNSET
        batch = dict(children["batch execution"][0].attributes or {})
        request_id = attrs["deepserve.request_id"]
        batch_ids[request_id] = batch["deepserve.batch.id"], batch["deepserve.batch.requests"]
    # the ingress's x-request-id wins over the body's id
    assert set(batch_ids) == {"r0", "ingress-1", "ingress-2"}
    assert batch_ids["r0"][1] == 1 and batch_ids["ingress-1"] == batch_ids["ingress-2"]
    assert batch_ids["ingress-1"][1] == 2 and batch_ids["ingress-1"][0] != batch_ids["r0"][0]


async def test_a_traceparent_header_makes_the_request_a_child_of_the_callers_span(
    served: Served, spans: InMemorySpanExporter
) -> None:
    r = await served.client.post("/predictions/sum", json=[[1, 2, 3]], headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200
    (trace,) = _by_trace(spans.get_finished_spans()).values()
    server, children = _tree(trace)
    assert server.name == "torchserve predict sum"
    assert server.context is not None and format(server.context.trace_id, "032x") == CALLER_TRACE
    assert server.parent is not None and format(server.parent.span_id, "016x") == CALLER_SPAN
    assert server.parent.is_remote
    assert sorted(children) == ["batch execution", "queue wait"]


async def test_a_caller_that_does_not_sample_gets_no_spans(
    served: Served, spans: InMemorySpanExporter
) -> None:
    """The SDK's default sampler follows the caller's sampled flag (here 00: not sampled)."""
    unsampled = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"}
    assert (
        await served.client.post("/predictions/sum", json=[[1, 2, 3]], headers=unsampled)
    ).status_code == 200
    assert spans.get_finished_spans() == ()


async def test_a_server_error_marks_the_span_and_a_client_error_does_not(
    served: Served, spans: InMemorySpanExporter
) -> None:
    """-1 poisons the batch: a 400 from the model (the client's fault); an unknown model: 404.
    Neither is the server's error; a bug in the model (a 500) is."""
    assert (await served.client.post("/v2/models/sum/infer", json=_v2([[-1, 0, 0]]))).status_code == 400
    assert (await served.client.post("/v2/models/nope/infer", json=_v2([[1, 2, 3]]))).status_code == 404
    poisoned, unknown = sorted(_by_trace(spans.get_finished_spans()).values(), key=len, reverse=True)
    server, children = _tree(poisoned)
    assert dict(server.attributes or {})["http.response.status_code"] == 400
    assert server.status.status_code == StatusCode.UNSET
    (batch,) = children["batch execution"]
    assert batch.status.status_code == StatusCode.ERROR and "poison" in (batch.status.description or "")
    server, children = _tree(unknown)
    assert server.name == "v2-http _unknown" and children == {}  # no model: one label for all unknown names
    attrs = dict(server.attributes or {})
    assert attrs["deepserve.model"] == "nope" and attrs["deepserve.status_code"] == 404

    spans.clear()
    assert (await served.client.post("/v2/models/buggy/infer", json=_v2([[1, 2, 3]]))).status_code == 500
    (trace,) = _by_trace(spans.get_finished_spans()).values()
    server, _ = _tree(trace)
    assert server.status.status_code == StatusCode.ERROR
    assert [e.name for e in server.events] == ["exception"]


class BuggySum(SumHandler):
    def predict_batch(self, items: list[Tensors]) -> list[Tensors]:
        raise RuntimeError("the model's own bug")


async def test_a_streamed_generation_has_its_time_to_first_token(
    served: Served, spans: InMemorySpanExporter
) -> None:
    body = {"model": "tiny-gpt", "prompt": "he", "max_tokens": 6, "temperature": 0, "stream": True}
    async with served.client.stream("POST", "/v1/completions", json=body,
                                    headers={"traceparent": TRACEPARENT}) as r:  # fmt: skip
        events = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    (trace,) = _by_trace(spans.get_finished_spans()).values()
    server, children = _tree(trace)
    assert server.name == "openai generate tiny-gpt"
    assert sorted(children) == ["queue wait", "time to first token"]
    (first,), (queue,) = children["time to first token"], children["queue wait"]
    assert first.start_time == queue.start_time and queue.end_time <= first.end_time  # type: ignore[operator]
    assert dict(first.attributes or {})["gen_ai.usage.input_tokens"] == 2
    # the SERVER span covers the whole stream: it ends after the first token, with the 200
    assert _within(first, server) and dict(server.attributes or {})["deepserve.status_code"] == 200


# -- gRPC ------------------------------------------------------------------------------------------
async def test_grpc_metadata_carries_the_callers_trace(tmp_path: Path, spans: InMemorySpanExporter) -> None:
    request = pb.ModelInferRequest(model_name="sum")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(np.ones((1, 3), np.float32).tobytes())
    async with serving(tmp_path) as env, grpc.aio.insecure_channel(env.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = (("traceparent", TRACEPARENT), ("x-request-id", "g-1"))
        await stub.ModelInfer(request, metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.ModelInfer(pb.ModelInferRequest(model_name="nope"), metadata=metadata)
    traces = _by_trace(spans.get_finished_spans())
    assert list(traces) == [int(CALLER_TRACE, 16)]  # both requests: children of the caller's span
    servers = sorted((s for s in traces[int(CALLER_TRACE, 16)] if s.kind == SpanKind.SERVER),
                     key=lambda s: s.start_time or 0)  # fmt: skip
    assert [s.name for s in servers] == ["v2-grpc infer sum", "v2-grpc _unknown"]
    ok, missing = (dict(s.attributes or {}) for s in servers)
    assert ok["rpc.system"] == "grpc" and ok["rpc.service"] == "inference.GRPCInferenceService"
    assert ok["rpc.method"] == "ModelInfer" and ok["rpc.grpc.status_code"] == 0
    assert ok["deepserve.request_id"] == "g-1"
    assert missing["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert all(s.parent is not None and format(s.parent.span_id, "016x") == CALLER_SPAN for s in servers)
    names = sorted(s.name for s in traces[int(CALLER_TRACE, 16)] if s.kind != SpanKind.SERVER)
    assert names == ["batch execution", "queue wait"]


# -- off by default --------------------------------------------------------------------------------
async def test_with_tracing_off_no_span_is_made(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not tracing.active

    def no_span(*args: Any) -> Any:
        raise AssertionError("a span was started with tracing off")

    monkeypatch.setattr(tracing, "start_request", no_span)
    monkeypatch.setattr(tracing, "record", no_span)
    assert (await served.client.post("/v2/models/sum/infer", json=_v2([[1, 2, 3]]))).status_code == 200


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, []),  # nothing names an exporter
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, ["console", "otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
    ],
)
def test_the_otel_variables_decide_whether_traces_are_on(environ: dict[str, str], wanted: list[str]) -> None:
    assert tracing.exporters_wanted(environ) == wanted


def test_variables_asking_for_what_the_server_cannot_send_are_one_clear_error() -> None:
    with pytest.raises(tracing.TracingConfigError, match="'zipkin' is not an exporter"):
        tracing.exporters_wanted({"OTEL_TRACES_EXPORTER": "zipkin"})
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    with pytest.raises(tracing.TracingConfigError, match="OTLP over gRPC only"):
        tracing.configure(environ)
    assert not tracing.active


def test_traces_asked_for_without_the_tracing_extra_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if opentelemetry-sdk were missing
    with pytest.raises(tracing.TracingConfigError, match=r"pip install 'deepserve\[tracing\]'"):
        tracing.configure({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert not tracing.active


_PROCESS_STATE = """
import os, sys
from opentelemetry import trace
from deepserve.service import tracing
on = tracing.configure(os.environ)
provider = trace.get_tracer_provider()
print(on, tracing.active, type(provider).__name__, getattr(provider, "resource", None) and
      provider.resource.attributes.get("service.name"))
"""


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "False False ProxyTracerProvider None"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, "True True TracerProvider deepserve"),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "edge"}, "True True TracerProvider edge"),
    ],
)
def test_the_entry_point_sets_a_provider_only_when_asked(environ: dict[str, str], expected: str) -> None:
    """In a process of its own: OpenTelemetry's global provider can be set once per process."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", _PROCESS_STATE], env={**clean, **environ}, cwd=REPO,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


# -- the real OTLP/gRPC exporter -------------------------------------------------------------------
class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """The receiving end of OTLP/gRPC: keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.received = threading.Event()

    def Export(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        self.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[_Collector, int]]:
    receiver = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    try:
        yield receiver, port
    finally:
        server.stop(0)


async def test_spans_reach_a_collector_through_the_otlp_grpc_exporter(
    served: Served, collector: tuple[_Collector, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider the entry point would build from these variables (the exporter reads them itself),
    installed without becoming the process's global one."""
    receiver, port = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "deepserve-test")
    provider = tracing.build_provider(os.environ)
    assert provider is not None
    tracing.use(provider)
    try:
        r = await served.client.post("/v2/models/sum/infer", json=_v2([[1, 2, 3]]),
                                     headers={"traceparent": TRACEPARENT})  # fmt: skip
        assert r.status_code == 200
        assert await asyncio.to_thread(provider.force_flush, 10_000)
    finally:
        tracing.stop()
        await asyncio.to_thread(provider.shutdown)
    assert receiver.received.is_set()
    sent = [(resource, span) for request in receiver.requests for resource in request.resource_spans
            for scope in resource.scope_spans for span in scope.spans]  # fmt: skip
    names = sorted(span.name for _, span in sent)
    assert names == ["batch execution", "queue wait", "v2-http infer sum"]
    assert {span.trace_id.hex() for _, span in sent} == {CALLER_TRACE}
    (server,) = [span for _, span in sent if span.name == "v2-http infer sum"]
    assert server.parent_span_id.hex() == CALLER_SPAN
    assert all(span.parent_span_id == server.span_id for _, span in sent if span is not server)
    services = {a.value.string_value for resource, _ in sent for a in resource.resource.attributes
                if a.key == "service.name"}  # fmt: skip
    assert services == {"deepserve-test"}


@pytest.mark.e2e
def test_deepserve_serve_sends_its_request_spans_when_the_variables_ask(
    tmp_path: Path, collector: tuple[_Collector, int]
) -> None:
    """The process as deployed: the entry point reads the variables, spans leave through the batch
    processor (flushed at exit), and nothing else is traced (no health probe, no FastAPI span)."""
    from tests.service.serve_process import FEATURES, MODEL, start, tiny_store

    receiver, port = collector
    log = tmp_path / "serve.log"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "DEEPSERVE_LOG_FORMAT": "json",
           "DEEPSERVE_ACCESS_LOG": "true"}  # fmt: skip
    served = start(tiny_store(tmp_path / "store"), log, **env)
    try:
        body = {
            "inputs": [
                {"name": "features", "shape": [1, FEATURES], "datatype": "FP32", "data": [0.5] * FEATURES}
            ]
        }
        answer = httpx.post(
            f"{served.http}/v2/models/{MODEL}/infer", json=body, headers={"traceparent": TRACEPARENT}
        )
        assert answer.status_code == 200
    finally:
        assert served.stop() == 0
    names = sorted(span.name for r in receiver.requests for rs in r.resource_spans for ss in rs.scope_spans
                   for span in ss.spans)  # fmt: skip
    assert names == ["batch execution", "queue wait", f"v2-http infer {MODEL}"]
    written = log.read_text().splitlines()
    # every line is JSON, uvicorn's too; grpc's C core writes its own (I1207 12:00:00.000 ...) to stderr
    assert [
        line for line in written if not line.startswith("{") and not re.match(r"[IWEF]\d{4} ", line)
    ] == []
    lines = [json.loads(line) for line in written if line.startswith("{")]
    (access,) = [line for line in lines if line["logger"] == "deepserve.access"]
    assert access["trace_id"] == CALLER_TRACE and access["status"] == 200
    assert any(line["logger"].startswith("uvicorn") for line in lines)
