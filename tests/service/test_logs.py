"""Log lines: text or JSON through one handler (uvicorn's too), the access log's line per request and
its fields, and a client that leaves written at INFO, never as an error."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import pytest_asyncio
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from starlette.requests import ClientDisconnect
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from deepserve.service import tracing
from deepserve.service.__main__ import _uvicorn_config
from deepserve.service.access_log import LOGGER as ACCESS
from deepserve.service.app import create_app
from deepserve.service.dataplane import DataPlane
from deepserve.service.logs import configure_logging
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings
from tests.service.fakes import FakeEngine, SumHandler, make_generation_handler
from tests.service.grpc_env import free_port, serving

SUM = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """Where ``configure_logging(settings, lines)`` writes; the loggers are put back afterwards."""
    root = logging.getLogger()
    names = ("", ACCESS, "uvicorn", "uvicorn.error", "uvicorn.access")
    kept = [(logging.getLogger(n), logging.getLogger(n).level, list(logging.getLogger(n).handlers),
             logging.getLogger(n).propagate) for n in names]  # fmt: skip
    try:
        yield io.StringIO()
    finally:
        for logger, level, handlers, propagate in kept:
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate = propagate
        assert root.handlers == kept[0][2]


def _configure(stream: io.StringIO, **settings: Any) -> Settings:
    config = Settings(**{"model_store": Path("/nonexistent"), **settings})
    configure_logging(config, stream, environ={})
    return config


def _json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# -- formats -------------------------------------------------------------------------------------
def test_json_lines_parse_and_carry_level_logger_and_message(lines: io.StringIO) -> None:
    _configure(lines, log_format="json")
    logging.getLogger("deepserve.test").info("model %s loaded", "sum")
    logging.getLogger("uvicorn.error").warning("a line of uvicorn's")
    try:
        raise ValueError("broken")
    except ValueError:
        logging.getLogger("deepserve.test").exception("it failed")
    logging.getLogger("deepserve.test").debug("below the level: not written")
    first, second, third = _json_lines(lines)
    assert first["level"] == "INFO" and first["logger"] == "deepserve.test"
    assert first["message"] == "model sum loaded" and first["time"].endswith("+00:00")
    assert second["level"] == "WARNING" and second["logger"] == "uvicorn.error"
    assert third["level"] == "ERROR" and "ValueError: broken" in third["exc_info"]


def test_text_is_the_default(lines: io.StringIO) -> None:
    _configure(lines)
    logging.getLogger("deepserve.test").warning("plain")
    assert lines.getvalue().rstrip().endswith(" WARNING deepserve.test: plain")


def test_uvicorn_logs_through_our_handler(lines: io.StringIO) -> None:
    """uvicorn's own logging setup would give its loggers handlers (and a format) of their own."""
    settings = _configure(lines, log_format="json")
    _uvicorn_config(FastAPI(), settings)  # uvicorn.Config sets up its logging when it is made
    assert logging.getLogger("uvicorn").handlers == logging.getLogger("uvicorn.access").handlers == []
    logging.getLogger("uvicorn.error").info("Started server process")
    assert _json_lines(lines)[-1]["message"] == "Started server process"


def test_json_lines_carry_the_trace_of_the_request_being_served(lines: io.StringIO) -> None:
    _configure(lines, log_format="json")
    provider = TracerProvider()
    tracing.use(provider)
    try:
        span = tracing.start_request("test", None, {})
        token = tracing.enter(span)
        logging.getLogger("deepserve.test").info("inside")
        tracing.leave(token)
        logging.getLogger("deepserve.test").info("outside")
        trace_id, span_id = tracing.ids(span)
    finally:
        tracing.stop()
        provider.shutdown()
    inside, outside = _json_lines(lines)
    assert (inside["trace_id"], inside["span_id"]) == (trace_id, span_id)
    assert "trace_id" not in outside


def test_otel_variables_the_server_cannot_honour_stop_the_start_in_one_line(lines: io.StringIO) -> None:
    with pytest.raises(SystemExit) as stopped:
        configure_logging(
            Settings(model_store=Path("/nonexistent")), lines, {"OTEL_TRACES_EXPORTER": "zipkin"}
        )
    assert stopped.value.code == 2
    (line,) = lines.getvalue().splitlines()
    assert " ERROR " in line and "OTEL_TRACES_EXPORTER=zipkin" in line


# -- the access log ------------------------------------------------------------------------------
@pytest_asyncio.fixture(loop_scope="function")
async def app_of(tmp_path: Path) -> AsyncIterator[Any]:
    """``await app_of(**settings)``: (an in-process HTTP client, the app) for "sum" and "gen" (the
    fake engine)."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(**settings: Any) -> tuple[httpx.AsyncClient, Any]:
            config = Settings(**{"model_store": tmp_path, **settings})
            registry = Registry(config, Metrics(CollectorRegistry()))
            await registry.add_handler(SumHandler())
            await registry.add_handler(make_generation_handler(), engine=FakeEngine())
            plane = DataPlane(config, registry)
            await stack.enter_async_context(plane)
            manager = await stack.enter_async_context(LifespanManager(create_app(plane)))
            await plane.loaded()
            transport = httpx.ASGITransport(app=manager.app)
            client = httpx.AsyncClient(transport=transport, base_url="http://t")
            return await stack.enter_async_context(client), manager.app

        yield make


async def test_the_access_log_writes_a_line_per_request_with_its_fields(
    lines: io.StringIO, app_of: Any
) -> None:
    _configure(lines, log_format="json", access_log=True, log_level="warning")
    client, _ = await app_of(access_log=True)
    await client.post("/v2/models/sum/infer", json=SUM, headers={"x-request-id": "edge-7"})
    await client.post("/v2/models/sum/infer", json={**SUM, "id": "v2-id"})
    await client.post("/v2/models/nope/infer", json=SUM)
    stream = {"model": "gen", "prompt": "abc", "stream": True}
    async with client.stream("POST", "/v1/completions", json=stream) as r:
        assert [line async for line in r.aiter_lines()][-2] == "data: [DONE]"
    await client.get("/v2/models/sum")  # metadata: not a request to the model
    access = [line for line in _json_lines(lines) if line["logger"] == ACCESS]
    fields = [
        (a["method"], a["path"], a["status"], a["model"], a["protocol"], a["request_id"]) for a in access
    ]
    assert fields == [
        ("POST", "/v2/models/sum/infer", 200, "sum", "v2-http", "edge-7"),
        ("POST", "/v2/models/sum/infer", 200, "sum", "v2-http", "v2-id"),
        ("POST", "/v2/models/nope/infer", 404, "nope", "v2-http", None),
        ("POST", "/v1/completions", 200, "gen", "openai", None),
    ]
    # at INFO though the level is warning
    assert all(a["level"] == "INFO" and a["duration_ms"] > 0 for a in access)
    assert access[0]["message"].startswith("POST /v2/models/sum/infer 200 ")


async def test_the_access_log_is_off_by_default(lines: io.StringIO, app_of: Any) -> None:
    _configure(lines, log_format="json")
    client, _ = await app_of()
    assert (await client.post("/v2/models/sum/infer", json=SUM)).status_code == 200
    assert [line for line in _json_lines(lines) if line["logger"] == ACCESS] == []


async def test_grpc_requests_have_access_lines_too(lines: io.StringIO, tmp_path: Path) -> None:
    _configure(lines, log_format="json", access_log=True)
    request = pb.ModelInferRequest(model_name="sum")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(np.ones((1, 3), np.float32).tobytes())
    async with serving(tmp_path, access_log=True) as env, grpc.aio.insecure_channel(env.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(request, metadata=(("x-request-id", "g-9"),))
    (line,) = [line for line in _json_lines(lines) if line["logger"] == ACCESS]
    assert (line["method"], line["path"], line["status"], line["protocol"], line["request_id"]) == (
        "POST", "/inference.GRPCInferenceService/ModelInfer", 200, "v2-grpc", "g-9")  # fmt: skip


# -- a client that leaves -------------------------------------------------------------------------
async def test_a_client_that_leaves_mid_stream_is_logged_at_info(lines: io.StringIO, tmp_path: Path) -> None:
    """Over a real socket (the way uvicorn is configured to run): the client closes during an SSE
    stream; the server writes one INFO line about it, and nothing at WARNING or above."""
    settings = _configure(lines, log_format="json", http_port=free_port(), model_store=tmp_path)
    registry = Registry(settings, Metrics(CollectorRegistry()))
    engine = FakeEngine()
    await registry.add_handler(make_generation_handler(), engine=engine)
    plane = DataPlane(settings, registry)
    server = uvicorn.Server(_uvicorn_config(create_app(plane), settings))
    async with plane:
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        engine.gate.clear()  # every stream holds after its first chunk
        reader, writer = await asyncio.open_connection("127.0.0.1", settings.http_port)
        body = json.dumps({"model": "gen", "prompt": "hello", "stream": True}).encode()
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)  # fmt: skip
        await writer.drain()
        assert b"data: " in await reader.readuntil(b"\n\n")
        writer.close()
        for _ in range(200):
            if "client went away" in lines.getvalue():
                break
            await asyncio.sleep(0.01)
        engine.gate.set()
        server.should_exit = True
        await task
    written = _json_lines(lines)
    left = [w for w in written if "client went away" in w["message"]]
    assert len(left) == 1 and left[0]["level"] == "INFO" and "model gen" in left[0]["message"]
    assert [w for w in written if w["level"] not in ("INFO", "DEBUG")] == []


async def test_a_cancelled_grpc_call_is_logged_at_info(lines: io.StringIO, tmp_path: Path) -> None:
    _configure(lines, log_format="json")
    request = pb.ModelInferRequest(model_name="sum")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(np.ones((1, 3), np.float32).tobytes())
    async with serving(tmp_path) as env, grpc.aio.insecure_channel(env.target) as channel:
        env.handler.release.clear()  # the model holds: the call waits for its batch
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        assert await asyncio.to_thread(env.handler.entered.wait, 5)
        call.cancel()
        for _ in range(200):
            if "client went away" in lines.getvalue():
                break
            await asyncio.sleep(0.01)
        env.handler.release.set()
    written = _json_lines(lines)
    (left,) = [w for w in written if "client went away" in w["message"]]
    assert left["level"] == "INFO" and "v2-grpc" in left["message"]
    assert [w for w in written if w["level"] not in ("INFO", "DEBUG")] == []


async def test_a_disconnect_logged_as_an_error_elsewhere_is_written_at_info(
    lines: io.StringIO, app_of: Any
) -> None:
    """An ASGI 2.4 server reports a client gone mid-stream by failing ``send``; Starlette raises
    ClientDisconnect, and the error boundary logs it as an error after the response started. The
    line is written at INFO, without a traceback."""
    _configure(lines, log_format="json")
    _, app = await app_of()
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and sent:
            raise OSError("connection reset by peer")
        sent.append(message)

    body = json.dumps({"prompt": "hello"}).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/predictions/gen", "raw_path": b"/predictions/gen",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1), "server": ("t", 80),
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", b"%d" % len(body))]}  # fmt: skip
    await app(scope, receive, send)
    written = _json_lines(lines)
    assert sent[0]["status"] == 200
    (line,) = [w for w in written if "during the response" in w["message"]]
    assert "/predictions/gen" in line["message"]
    assert line["level"] == "INFO" and "exc_info" not in line
    assert [w for w in written if w["level"] not in ("INFO", "DEBUG")] == []


def test_a_disconnect_below_the_log_level_is_not_written(lines: io.StringIO) -> None:
    _configure(lines, log_level="warning")
    log = logging.getLogger("deepserve.test")
    log.error("the stream to %s broke", "/v1/completions", exc_info=ClientDisconnect())
    log.error("a real error", exc_info=RuntimeError("bug"))
    assert "broke" not in lines.getvalue() and "a real error" in lines.getvalue()
