"""An optional input (a handler's ``TensorSpec.optional``) over both transports: the model config says
``optional: true`` as Triton's ModelInput does; the KServe v2 metadata keeps name, datatype, shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest_asyncio
import tritonclient.grpc.aio as triton_aio
from asgi_lifespan import LifespanManager
from prometheus_client import CollectorRegistry

from deepserve.service.app import create_app
from deepserve.service.dataplane import DataPlane
from deepserve.service.grpc_server import create_grpc_server
from deepserve.service.grpc_service import InferenceServicer
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings
from deepserve.store import TensorSpec
from tests.service.fakes import SumHandler, make_spec
from tests.service.grpc_env import free_port

NOTE = TensorSpec(name="note", datatype="BYTES", shape=[-1, 1], optional=True)
METADATA_INPUTS = [
    {"name": "x", "datatype": "FP32", "shape": [-1, 3]},
    {"name": "note", "datatype": "BYTES", "shape": [-1, 1]},
]


class NotedSum(SumHandler):
    """``sum`` with an optional second input, as the image / text / seed handlers serve one."""

    @property
    def inputs(self) -> list[TensorSpec]:
        return [*self.spec.inputs, NOTE]


@dataclass
class Fronts:
    http: httpx.AsyncClient
    grpc: triton_aio.InferenceServerClient


@pytest_asyncio.fixture(loop_scope="function")
async def fronts(tmp_path: Path) -> AsyncIterator[Fronts]:
    settings = Settings(model_store=tmp_path, grpc_port=free_port())
    registry = Registry(settings, Metrics(CollectorRegistry()))
    await registry.add_handler(NotedSum(make_spec("noted")))
    plane = DataPlane(settings, registry)
    app = create_app(plane)
    async with plane, LifespanManager(app) as manager:
        await plane.loaded()
        server = create_grpc_server(InferenceServicer(plane), settings, ready=plane.ready)
        await server.start()
        grpc = triton_aio.InferenceServerClient(f"127.0.0.1:{settings.grpc_port}")
        transport = httpx.ASGITransport(app=manager.app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                yield Fronts(http, grpc)
        finally:
            await grpc.close()
            await server.stop(0)


async def test_http_config_marks_the_optional_input_and_metadata_stays_v2(fronts: Fronts) -> None:
    config = (await fronts.http.get("/v2/models/noted/config")).json()
    assert config["input"] == [
        {"name": "x", "data_type": "TYPE_FP32", "dims": [3]},
        {"name": "note", "data_type": "TYPE_STRING", "dims": [1], "optional": True},
    ]
    assert all("optional" not in t for t in config["output"])  # Triton's ModelOutput has no such field
    assert (await fronts.http.get("/v2/models/noted")).json()["inputs"] == METADATA_INPUTS


async def test_grpc_model_config_and_metadata_parse_in_tritonclient(fronts: Fronts) -> None:
    config = (await fronts.grpc.get_model_config("noted")).config
    inputs = [(i.name, list(i.dims), i.optional) for i in config.input]
    assert inputs == [("x", [3], False), ("note", [1], True)]
    meta = await fronts.grpc.get_model_metadata("noted")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        (t["name"], t["datatype"], t["shape"]) for t in METADATA_INPUTS
    ]
    as_json = await fronts.grpc.get_model_metadata("noted", as_json=True)
    assert all(set(t) == {"name", "datatype", "shape"} for t in as_json["inputs"])
