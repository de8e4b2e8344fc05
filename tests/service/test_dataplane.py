"""The data plane alone and under both transports: one policy, one lookup, the loop kept free."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import pytest_asyncio
from asgi_lifespan import LifespanManager
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from deepserve.handlers.base import Request, Tensors
from deepserve.service.app import create_app
from deepserve.service.dataplane import DataPlane
from deepserve.service.errors import (
    ManagementDisabledError,
    ModelNotFoundError,
    ShuttingDownError,
    UnauthorizedError,
)
from deepserve.service.grpc_server import create_grpc_server
from deepserve.service.grpc_service import InferenceServicer
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings
from tests.e2e.conftest import free_port
from tests.service.fakes import SumHandler

ROW = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}


class SlowDecode(SumHandler):
    """Decoding a TorchServe body takes 50 ms (a large image, say)."""

    def preprocess(self, request: Request) -> Tensors:
        if not hasattr(request, "tensors"):
            time.sleep(0.05)
        return super().preprocess(request)


async def _plane(tmp_path: Path, **settings: Any) -> DataPlane:
    config = Settings(model_store=tmp_path, grpc_port=free_port(), **settings)
    registry = Registry(config, Metrics(CollectorRegistry()))
    await registry.add_handler(SlowDecode())
    return DataPlane(config, registry)


@pytest_asyncio.fixture(loop_scope="function")
async def both(tmp_path: Path) -> AsyncIterator[tuple[DataPlane, httpx.AsyncClient, Any]]:
    """One data plane behind the HTTP app and the gRPC server, with an inference token."""
    plane = await _plane(tmp_path, auth_token="t0ken")
    grpc_server = create_grpc_server(InferenceServicer(plane), plane.settings, ready=plane.ready)
    await grpc_server.start()
    app = create_app(plane)
    async with plane, LifespanManager(app) as manager:
        await plane.loaded()
        transport = httpx.ASGITransport(app=manager.app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
            grpc.aio.insecure_channel(f"127.0.0.1:{plane.settings.grpc_port}") as channel,
        ):
            yield plane, client, pb_grpc.GRPCInferenceServiceStub(channel)
    await grpc_server.stop(0)


def _grpc_row() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="sum")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(np.ones((1, 3), "<f4").tobytes())
    return request


async def test_both_transports_refuse_with_the_same_policy(both: Any) -> None:
    plane, client, stub = both
    http = await client.post("/v2/models/sum/infer", json=ROW)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ModelInfer(_grpc_row(), timeout=5)
    assert http.status_code == 401 and refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert http.json()["error"] == refused.value.details(), "one message, written once"

    token = (("authorization", "Bearer t0ken"),)
    assert (await stub.ModelInfer(_grpc_row(), metadata=token, timeout=5)).model_name == "sum"
    plane.begin_drain()
    http = await client.post("/v2/models/sum/infer", json=ROW, headers={"authorization": "Bearer t0ken"})
    with pytest.raises(grpc.aio.AioRpcError) as draining:
        await stub.ModelInfer(_grpc_row(), metadata=token, timeout=5)
    assert http.status_code == 503 and draining.value.code() == grpc.StatusCode.UNAVAILABLE
    assert http.json()["error"] == draining.value.details()


async def test_a_request_looks_its_model_up_once(both: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    plane, client, stub = both
    lookups: list[str] = []
    real_get = plane.registry.get

    def counted(name: str, version: Any = None) -> Any:
        lookups.append(name)
        return real_get(name, version)

    monkeypatch.setattr(plane.registry, "get", counted)
    auth = {"authorization": "Bearer t0ken"}
    assert (await client.post("/v2/models/sum/infer", json=ROW, headers=auth)).status_code == 200
    assert lookups == ["sum"]
    await stub.ModelInfer(_grpc_row(), metadata=tuple(auth.items()), timeout=5)
    assert lookups == ["sum", "sum"]
    assert (await client.post("/predictions/sum", json=[[1, 2, 3]], headers=auth)).status_code == 200
    assert lookups == ["sum"] * 3


async def test_slow_decoding_does_not_stall_the_other_connections(both: Any) -> None:
    _, client, _ = both
    auth = {"authorization": "Bearer t0ken"}
    lag = 0.0

    async def probe() -> None:  # what every other connection waits: how long the loop is away
        nonlocal lag
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.002)
            lag += max(0.0, time.perf_counter() - started - 0.002)
            assert (await client.get("/v2/health/live")).status_code == 200

    prober = asyncio.create_task(probe())
    await asyncio.sleep(0.02)
    for _ in range(3):  # the first runs unmeasured, the next ones measured as slow: all off the loop
        slow = [client.post("/predictions/sum", json=[[1, 2, 3]], headers=auth) for _ in range(4)]
        assert [r.status_code for r in await asyncio.gather(*slow)] == [200] * 4
    prober.cancel()
    # decoding on the loop would hold it 12 x 50 ms = 600 ms; off it, only scheduling delays remain
    assert lag < 0.2, f"the event loop was away {lag * 1000:.0f} ms in all while requests decoded"


async def test_the_guard_counts_in_flight_and_releases_on_errors(tmp_path: Path) -> None:
    plane = await _plane(tmp_path, auth_token="t0ken")
    with pytest.raises(UnauthorizedError):
        plane.guard(b"Bearer nope").__enter__()
    with pytest.raises(RuntimeError), plane.guard("Bearer t0ken"):
        assert plane.state.inflight == 1
        raise RuntimeError("the handler failed")
    assert plane.state.inflight == 0
    with plane.guard(None, trusted=True):  # load / unload carry their own token, checked there
        pass
    plane.begin_drain()
    assert not plane.ready()
    with pytest.raises(ShuttingDownError):
        plane.guard("Bearer t0ken").__enter__()


async def test_unknown_models_count_under_one_label_and_management_is_off(tmp_path: Path) -> None:
    plane = await _plane(tmp_path)
    for name in ("nope-1", "nope-2"):
        with pytest.raises(ModelNotFoundError), plane.call(name, None, "v2-http"):
            pass
    labels = {"model": "_unknown", "protocol": "v2-http", "code": "404"}
    assert plane.metrics.registry.get_sample_value("deepserve_requests_total", labels) == 2.0
    with pytest.raises(ManagementDisabledError):
        await plane.load_model("sum", "Bearer anything")


async def test_a_program_can_use_the_data_plane_without_a_transport(tmp_path: Path) -> None:
    """infer / embed / generate on the plane itself: the same policy and accounting, no sockets."""
    from deepserve.service.engine import SamplingParams
    from deepserve.service.v2_codec import InferRequest
    from tests.service.fakes import EmbedHandler, FakeEngine, make_generation_handler

    config = Settings(model_store=tmp_path)
    registry = Registry(config, Metrics(CollectorRegistry()))
    await registry.add_handler(SumHandler())
    await registry.add_handler(EmbedHandler())
    await registry.add_handler(make_generation_handler(), engine=FakeEngine())
    async with DataPlane(config, registry) as plane:
        await plane.loaded()
        result = await plane.infer("sum", InferRequest({"x": np.ones((2, 3), np.float32)}))
        assert result.outputs["total"].ravel().tolist() == [3.0, 3.0]
        vectors, _ = await plane.embed("embed", ["abc", "a"])
        assert vectors.shape[0] == 2
        text = "".join([c.text async for c in plane.generate("gen", "olleh", SamplingParams(max_tokens=8))])
        assert text == "hello"
        labels = {"model": "sum", "protocol": "python", "code": "200"}
        assert plane.metrics.registry.get_sample_value("deepserve_requests_total", labels) == 1.0
        with pytest.raises(ModelNotFoundError):
            await plane.infer("nope", InferRequest({}))

        stream = plane.generate("gen", "abcdef", SamplingParams(max_tokens=8))
        async with contextlib.aclosing(stream) as chunks:
            async for _ in chunks:
                break  # the program stops reading: a client that left, not a server error
        left = {"model": "gen", "protocol": "python", "code": "499"}
        assert plane.metrics.registry.get_sample_value("deepserve_requests_total", left) == 1.0
        assert plane.state.inflight == 0
        plane.begin_drain()  # drain refuses the program's own calls too, and waits for them
        with pytest.raises(ShuttingDownError):
            await plane.infer("sum", InferRequest({"x": np.ones((1, 3), np.float32)}))


async def test_a_store_that_cannot_be_read_says_why_and_still_shuts_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = DataPlane(Settings(model_store=tmp_path))

    def unreadable() -> dict[str, list[int]]:
        raise PermissionError("permission denied: model_store")

    monkeypatch.setattr(plane.registry, "scan", unreadable)
    await plane.start()
    await plane.loaded()
    assert not plane.ready() and "PermissionError: permission denied" in plane.why_not_ready()
    await plane.stop()  # no traceback out of the failed load
