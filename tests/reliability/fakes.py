"""A fake handler that fails on purpose, and an in-process server around fake handlers.

``FaultyHandler`` sums rows of ``x`` FP32 [-1, 3]. The first value of a row picks a fault:
``BUG`` raises a plain ``RuntimeError`` (a handler bug), ``BAD`` raises ``InvalidInputError``
(the handler rejects the input) and ``HANG`` blocks ``predict_batch`` until ``release`` is set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from deepserve.handlers.base import Handler, InvalidInputError, Request, TensorRequest, Tensors
from deepserve.service.app import create_app
from deepserve.service.dataplane import DataPlane
from deepserve.service.grpc_server import GrpcServer, create_grpc_server
from deepserve.service.grpc_service import InferenceServicer
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings
from tests.service.fakes import make_spec

BUG, BAD, HANG = 666.0, 777.0, 888.0


class FaultyHandler(Handler):
    def __init__(self, name: str, hold: threading.Event | None = None) -> None:
        super().__init__(make_spec(name, max_batch_size=16))
        self.release = threading.Event()
        self.hang_s = 10.0  # a HANG row blocks at most this long
        self.hanging = threading.Event()  # set while a HANG row blocks
        self.delay_s = 0.0  # every batch takes at least this long (a slow model)
        self.hold = hold  # when given, every batch waits for it (to make several requests batch together)
        self.computed: list[float] = []  # first value of every row that reached the model
        self.batches: list[int] = []

    def load(self) -> None:
        pass

    def preprocess(self, request: Request) -> Tensors:
        assert isinstance(request, TensorRequest)
        if "x" not in request.tensors:
            raise InvalidInputError("input 'x' is missing")
        return {"x": np.asarray(request.tensors["x"], dtype=np.float32)}

    def predict_batch(self, items: list[Tensors]) -> list[Tensors]:
        if self.hold is not None:
            self.hold.wait(timeout=10)
        if self.delay_s:
            time.sleep(self.delay_s)
        firsts = [float(v) for item in items for v in item["x"][:, 0]]
        self.batches.append(len(items))
        self.computed += firsts
        if HANG in firsts:
            self.hanging.set()
            self.release.wait(timeout=self.hang_s)
        if BUG in firsts:
            raise RuntimeError("handler bug: division by zero in row post-processing")
        if BAD in firsts:
            raise InvalidInputError(f"row starting with {BAD} is out of this model's range")
        return [{"total": item["x"].sum(axis=1, keepdims=True)} for item in items]

    def postprocess(self, outputs: Tensors, request: Request) -> Any:
        return outputs


def infer_body(first: float, rows: int = 1, timeout_us: int | None = None) -> dict[str, Any]:
    data = [[first, 1.0, 2.0]] * rows
    body: dict[str, Any] = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 3], "data": data}]}
    if timeout_us is not None:
        body["parameters"] = {"timeout": timeout_us}
    return body


@dataclass
class InProcess:
    client: httpx.AsyncClient
    app: FastAPI
    registry: Registry
    plane: DataPlane


@asynccontextmanager
async def serve_in_process(store: Path, handlers: list[Handler], **settings: Any) -> AsyncIterator[InProcess]:
    """create_app(DataPlane(settings, registry with ``handlers``)) behind an ASGI transport (no sockets)."""
    options: dict[str, Any] = {"model_store": store, "drain_timeout_s": 5.0, **settings}
    config = Settings(**options)
    registry = Registry(config, Metrics(CollectorRegistry()))
    for handler in handlers:
        await registry.add_handler(handler)
    plane = DataPlane(config, registry)
    app = create_app(plane)
    async with plane, LifespanManager(app) as manager:
        await plane.loaded()
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            yield InProcess(client, app, registry, plane)


def grpc_server_for(plane: DataPlane) -> GrpcServer:
    """The gRPC transport over the same data plane, on ``plane.settings.grpc_port`` (not started)."""
    return create_grpc_server(InferenceServicer(plane), plane.settings, ready=plane.ready)
