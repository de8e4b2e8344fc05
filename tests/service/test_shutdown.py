"""Shutdown within a finite grace period: the transports, the data plane, the batchers and the
engines share one drain deadline, so a stuck request cannot keep the process past it (Kubernetes
would SIGKILL it, and the exit would not be clean)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from prometheus_client import CollectorRegistry

from deepserve.service.__main__ import _drain
from deepserve.service.app import create_app
from deepserve.service.dataplane import DataPlane
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings
from tests.service.fakes import SumHandler

BODY = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}


async def test_the_data_plane_stops_within_what_is_left_of_the_drain(tmp_path: Path) -> None:
    settings = Settings(model_store=tmp_path, drain_timeout_s=1.0)
    registry = Registry(settings, Metrics(CollectorRegistry()))
    handler = SumHandler()
    handler.release.clear()  # the model hangs in its batch (for 10 s at most)
    await registry.add_handler(handler)
    plane = DataPlane(settings, registry)
    app = create_app(plane)
    async with plane, LifespanManager(app, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            stuck = asyncio.create_task(client.post("/v2/models/sum/infer", json=BODY))
            while plane.state.inflight == 0:
                await asyncio.sleep(0.01)
            plane.begin_drain()  # what SIGTERM does
            await asyncio.sleep(0.8)  # the transports' part of the drain
            exiting = time.perf_counter()
    took = time.perf_counter() - exiting
    handler.release.set()
    stuck.cancel()
    # 0.2 s were left: not another full drain for the models
    assert took < 0.8, f"the data plane took {took:.2f} s to stop after the drain deadline had nearly passed"


async def test_after_the_drain_uvicorn_gets_only_what_is_left(tmp_path: Path) -> None:
    plane = DataPlane(Settings(model_store=tmp_path, drain_timeout_s=0.3))
    plane.state.enter()  # a request that never finishes
    http: Any = SimpleNamespace(config=SimpleNamespace(timeout_graceful_shutdown=31), should_exit=False)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    started = time.perf_counter()
    assert await _drain(plane, http, done, None) == 0
    assert time.perf_counter() - started < 1.0
    assert http.should_exit and http.config.timeout_graceful_shutdown == 1  # not another drain + 1 s
    assert plane.draining and plane.state.drain_time_left() == 0.0
