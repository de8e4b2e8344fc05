"""A handler bug over a real uvicorn socket: a typed 500 in the route's protocol, logged once, and
the keep-alive connection still serves the next request.

Only a real server shows the connection part (the ASGI test transport has no connection).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
from prometheus_client import CollectorRegistry

from deepserve.handlers.base import Tensors
from deepserve.service.app import create_app
from deepserve.service.dataplane import DataPlane
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings
from tests.service.fakes import SumHandler, make_spec

BUG_VALUE = 13.0


class BuggyHandler(SumHandler):
    """Sums rows, but a row starting with 13 hits a bug (a plain exception, not a HandlerError)."""

    def predict_batch(self, items: list[Tensors]) -> list[Tensors]:
        if any((item["x"][:, 0] == BUG_VALUE).any() for item in items):
            raise RuntimeError("index out of range in the model's post-processing")
        return super().predict_batch(items)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest_asyncio.fixture(loop_scope="function")
async def port(tmp_path: Path) -> AsyncIterator[int]:
    settings = Settings(model_store=tmp_path, http_port=_free_port())
    registry = Registry(settings, Metrics(CollectorRegistry()))
    await registry.add_handler(BuggyHandler(make_spec("buggy")))
    plane = DataPlane(settings, registry)
    config = uvicorn.Config(create_app(plane), host="127.0.0.1", port=settings.http_port, log_level="warning")
    server = uvicorn.Server(config)
    async with plane:
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        yield settings.http_port
        server.should_exit = True
        await task


Answer = tuple[int, dict[str, str], object]


async def _exchange(reader: Any, writer: Any, path: str, body: Any) -> Answer:
    data = json.dumps(body).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode() + data
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    payload = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), headers, json.loads(payload)


@pytest.mark.parametrize(
    ("path", "body", "error_of"),
    [
        ("/predictions/buggy", [[BUG_VALUE, 0, 0]], lambda b: b["message"]),  # TorchServe-style
        (
            "/v2/models/buggy/infer",  # KServe v2 (the fast path)
            {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [BUG_VALUE, 0, 0]}]},
            lambda b: b["error"],
        ),
    ],
)
async def test_a_handler_bug_is_a_typed_500_on_a_connection_that_stays_open(
    port: int, path: str, body: object, error_of: object, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    with caplog.at_level(logging.ERROR):
        status, headers, answer = await _exchange(reader, writer, path, body)
    assert status == 500, answer
    assert "internal error" in error_of(answer)  # type: ignore[operator]
    assert headers.get("connection", "").lower() != "close"
    # the same socket serves the next request: the bug did not cost the client its connection
    good = [[1.0, 2.0, 3.0]] if path.startswith("/predictions") else {
        "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]
    }  # fmt: skip
    status, _, answer = await _exchange(reader, writer, path, good)
    assert status == 200, answer
    writer.close()
    tracebacks = [r for r in caplog.records if r.exc_info and "index out of range" in str(r.exc_info[1])]
    assert len(tracebacks) == 1, [r.getMessage() for r in caplog.records]
