"""An in-process gRPC server for the service tests: the fake models behind ``create_grpc_server``.

One place builds the servicer, so the gRPC tests follow the servicer's constructor from here alone.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2 as pb

from deepserve.handlers.base import Tensors
from deepserve.service.dataplane import DataPlane
from deepserve.service.grpc_server import GrpcServer, create_grpc_server
from deepserve.service.grpc_service import InferenceServicer
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings
from tests.service.fakes import FakeEngine, SumHandler, make_generation_handler

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HeldSum(SumHandler):
    """SumHandler that tells when a batch has reached the model (``entered``), so a test can hold
    the model with ``release`` and know what is running and what is queued."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()

    def predict_batch(self, items: list[Tensors]) -> list[Tensors]:
        self.entered.set()
        return super().predict_batch(items)


@dataclass
class GrpcEnv:
    target: str  # host:port
    server: GrpcServer
    registry: Registry
    plane: DataPlane
    handler: HeldSum  # the "sum" model; "gen" streams the prompt reversed
    settings: Settings


@contextlib.asynccontextmanager
async def serving(store: Path, **settings: Any) -> AsyncIterator[GrpcEnv]:
    """A started gRPC server with "sum" and "gen"; ``settings`` override the defaults."""
    config = Settings(**{"model_store": store, "grpc_port": free_port(), **settings})
    registry = Registry(config, Metrics(CollectorRegistry()))
    handler = HeldSum()
    await registry.add_handler(handler)
    await registry.add_handler(make_generation_handler(), engine=FakeEngine())
    plane = DataPlane(config, registry)
    await plane.start()
    await plane.loaded()
    server = create_grpc_server(InferenceServicer(plane), config, ready=plane.ready)
    await server.start()
    try:
        yield GrpcEnv(f"127.0.0.1:{config.grpc_port}", server, registry, plane, handler, config)
    finally:
        handler.release.set()
        await server.stop(0)
        await plane.stop()


def infer_request(rows: np.ndarray, model: str = "sum") -> bytes:
    """A serialized ModelInferRequest for ``x`` = ``rows`` (for raw stubs that send bytes)."""
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=list(rows.shape))
    request.raw_input_contents.append(rows.astype(np.float32).tobytes())
    return request.SerializeToString()


def raw_stub(channel: Any, method: str = INFER) -> Any:
    """A unary stub that sends and returns bytes, so a test can send what no generated stub would."""
    return channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
