"""``grpc.health.v1`` follows readiness and drain; reflection lists the services.

What a ``grpc_health_probe`` (or a Kubernetes gRPC probe, or Envoy) sees: SERVING once the models
are in, NOT_SERVING while they are not, and NOT_SERVING from the first moment of a drain while the
calls in flight are still being answered.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tritonclient.grpc import service_pb2 as pb

from deepserve.service.grpc_server import HEALTH_POLL_S, INFERENCE_SERVICE
from tests.service.grpc_env import GrpcEnv, infer_request, raw_stub, serving
from tests.service.serve_process import start, tiny_store

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest_asyncio.fixture(loop_scope="function")
async def env(tmp_path: Path) -> AsyncIterator[GrpcEnv]:
    async with serving(tmp_path) as running:
        yield running


async def _status(target: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(answer.status)


async def _becomes(target: str, status: int, service: str = "") -> None:
    for _ in range(int(4 * HEALTH_POLL_S / 0.05)):
        if await _status(target, service) == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"health of {service!r} never became {health_pb2.HealthCheckResponse.Name(status)}")


async def test_health_follows_readiness(env: GrpcEnv) -> None:
    assert await _status(env.target) == SERVING
    assert await _status(env.target, INFERENCE_SERVICE) == SERVING
    env.registry.loading_done = False  # as while the store loads: not ready
    await _becomes(env.target, NOT_SERVING)
    await _becomes(env.target, NOT_SERVING, INFERENCE_SERVICE)
    env.registry.loading_done = True
    await _becomes(env.target, SERVING)
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await _status(env.target, "no.such.Service")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_drain_turns_health_not_serving_while_calls_in_flight_finish(env: GrpcEnv) -> None:
    env.handler.release.clear()  # a call in flight, held by the model
    async with grpc.aio.insecure_channel(env.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == SERVING
        in_flight = asyncio.ensure_future(raw_stub(channel)(infer_request(np.ones((1, 3))), timeout=10))
        assert await asyncio.to_thread(env.handler.entered.wait, 5)
        env.plane.begin_drain()  # what SIGTERM does, in this order
        await env.server.begin_drain()
        # at once, not at the next poll: a probe sees it while the call is still running
        assert (await asyncio.wait_for(watch.read(), HEALTH_POLL_S / 2)).status == NOT_SERVING
        assert await _status(env.target) == NOT_SERVING
        assert await _status(env.target, INFERENCE_SERVICE) == NOT_SERVING
        assert not in_flight.done()
        env.handler.release.set()
        answer = pb.ModelInferResponse.FromString(await in_flight)
        assert answer.model_name == "sum"
        env.plane.state.draining = False  # even if readiness came back, a drain is for good
        await asyncio.sleep(2 * HEALTH_POLL_S)
        assert await _status(env.target) == NOT_SERVING
        watch.cancel()


async def test_reflection_lists_the_services(env: GrpcEnv) -> None:
    async with grpc.aio.insecure_channel(env.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for answer in stub.ServerReflectionInfo(ask()):
            names = {s.name for s in answer.list_services_response.service}
    assert names == {INFERENCE_SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


async def test_reflection_serves_the_inference_protos(env: GrpcEnv) -> None:
    """What grpcurl needs to call a method without the .proto: the service's file descriptors."""

    def describe() -> list[str]:  # grpcio-reflection's client is synchronous: off the server's loop
        with grpc.insecure_channel(env.target) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            assert INFERENCE_SERVICE in list(database.get_services())
            service = DescriptorPool(database).FindServiceByName(INFERENCE_SERVICE)
            return [m.name for m in service.methods]

    methods = await asyncio.to_thread(describe)
    assert {"ModelInfer", "ModelStreamInfer", "ServerReady"} <= set(methods)


@pytest.mark.e2e
def test_sigterm_turns_health_not_serving_before_the_process_exits(tmp_path: Path) -> None:
    """The real process: a health Watch opened on a ready server sees NOT_SERVING after SIGTERM,
    while the process is still up, and the process then exits 0."""
    served = start(tiny_store(tmp_path / "store"), tmp_path / "server.log")
    try:
        with grpc.insecure_channel(served.grpc) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(40):  # HTTP said ready; health follows within HEALTH_POLL_S
                if health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING:
                    break
                time.sleep(0.05)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
            watch = health.Watch(health_pb2.HealthCheckRequest(service=INFERENCE_SERVICE), timeout=20)
            assert next(watch).status == SERVING
            served.process.send_signal(signal.SIGTERM)
            assert next(watch).status == NOT_SERVING
            assert served.process.poll() is None  # told before the listener closes
    finally:
        code = served.stop()
    assert code == 0, served.log.read_text()[-3000:]
