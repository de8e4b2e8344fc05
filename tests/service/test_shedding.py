"""Shedding before decoding: with a model's queue full, a request is refused (429 / UNAVAILABLE)
before its body is read or decoded, so an overloaded server spends a length check per refusal.

Each refused request here carries a body that would fail decoding: a 429 instead of a 400 shows
it was never decoded. A spy on the handler's preprocess shows nothing reached it either.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from asgi_lifespan import LifespanManager
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2 as pb

from deepserve.handlers.base import Request, Tensors
from deepserve.service.app import create_app
from deepserve.service.dataplane import DataPlane
from deepserve.service.grpc_server import create_grpc_server
from deepserve.service.grpc_service import InferenceServicer
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings
from tests.service.fakes import EmbedHandler, SumHandler, make_spec

QUEUE = 2
Full = tuple[httpx.AsyncClient, str, "SpySum"]


class SpySum(SumHandler):
    def __init__(self) -> None:
        super().__init__(make_spec("sum", max_batch_size=1))
        self.preprocessed = 0

    def preprocess(self, request: Request) -> Tensors:
        self.preprocessed += 1
        return super().preprocess(request)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest_asyncio.fixture(loop_scope="function")
async def full(tmp_path: Path) -> AsyncIterator[Full]:
    """A server whose 'sum' model is stuck on one batch with its queue full behind it."""
    settings = Settings(model_store=tmp_path, grpc_port=_free_port(), max_queue_size=QUEUE, max_batch_size=1)
    registry = Registry(settings, Metrics(CollectorRegistry()))
    spy = SpySum()
    await registry.add_handler(spy)
    await registry.add_handler(EmbedHandler())
    plane = DataPlane(settings, registry)
    app = create_app(plane)
    grpc_server = create_grpc_server(InferenceServicer(plane), settings, ready=plane.ready)
    await grpc_server.start()
    spy.release.clear()
    async with plane, LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            row = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
            stuck = [asyncio.ensure_future(client.post("/v2/models/sum/infer", json=row))]
            await asyncio.sleep(0.2)  # that one is running, held by the model
            post = client.post
            stuck += [asyncio.ensure_future(post("/v2/models/sum/infer", json=row)) for _ in range(QUEUE)]
            await asyncio.sleep(0.2)  # QUEUE more are waiting: the queue is full
            before = spy.preprocessed
            yield client, f"127.0.0.1:{settings.grpc_port}", spy
            assert spy.preprocessed == before, "a refused request reached preprocess"
            spy.release.set()
            assert [r.status_code for r in await asyncio.gather(*stuck)] == [200] * (1 + QUEUE)
    await grpc_server.stop(0)


async def test_http_refuses_before_reading_the_body(full: Any) -> None:
    client, _, _ = full
    json_header = {"content-type": "application/json"}
    v2 = await client.post("/v2/models/sum/infer", content=b"{not json", headers=json_header)
    assert v2.status_code == 429 and "retry" in v2.json()["error"], v2.text
    assert int(v2.headers["retry-after"]) >= 1
    ts = await client.post("/predictions/sum", content=b"\x00\x01 not rows")
    assert ts.status_code == 429 and ts.json()["code"] == 429, ts.text


async def test_grpc_refuses_before_decoding_the_tensors(full: Any) -> None:
    _, target, _ = full
    request = pb.ModelInferRequest(model_name="sum")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(b"\x00" * 5)  # 5 bytes for 12: would be INVALID_ARGUMENT
    async with grpc.aio.insecure_channel(target) as channel:
        stub = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer", request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub(request.SerializeToString())
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_other_models_are_not_shed(full: Any) -> None:
    client, _, _ = full
    answer = await client.post("/v1/embeddings", json={"model": "embed", "input": "abc"})
    assert answer.status_code == 200, answer.text
