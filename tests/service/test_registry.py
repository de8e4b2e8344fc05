"""Registry over a store on disk (handlers.load_handler faked), management API, settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from asgi_lifespan import LifespanManager
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from deepserve.service.app import create_app
from deepserve.service.dataplane import DataPlane
from deepserve.service.errors import InvalidRequestError
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry, check_model_name
from deepserve.service.settings import Settings
from deepserve.store import ModelSpec
from tests.service.fakes import SumHandler, make_spec

TOKEN = {"Authorization": "Bearer m4nage"}


def _write_store(root: Path) -> Path:
    for name, versions in {"sum": [1, 2], "other": [1]}.items():
        for version in versions:
            vdir = root / name / str(version)
            vdir.mkdir(parents=True)
            spec = make_spec(name).model_copy(update={"version": version})
            spec.write(vdir)
    broken = root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.json").write_text("{not json")
    return root


@pytest.fixture
def fake_loader(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    loaded: list[Path] = []

    def load_handler(version_dir: Path, **_: Any) -> SumHandler:
        loaded.append(version_dir)
        return SumHandler(ModelSpec.read(version_dir))

    monkeypatch.setattr("deepserve.handlers.load_handler", load_handler)
    return loaded


@pytest_asyncio.fixture(loop_scope="function")
async def client(tmp_path: Path, fake_loader: list[Path]) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(model_store=_write_store(tmp_path), enable_management=True, management_token="m4nage")
    plane = DataPlane(settings)
    app = create_app(plane)
    async with plane, LifespanManager(app) as manager:
        await plane.loaded()
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


async def test_broken_model_is_reported_and_the_others_serve(client: httpx.AsyncClient) -> None:
    index = {(r["name"], r["version"]): r for r in (await client.post("/v2/repository/index")).json()}
    assert index[("broken", "1")]["state"] == "UNAVAILABLE" and index[("broken", "1")]["reason"]
    assert index[("sum", "2")]["state"] == "READY"
    ready = await client.get("/v2/health/ready")
    assert ready.status_code == 503 and "broken" in ready.json()["error"]
    assert (await client.get("/v2/models/broken/ready")).status_code == 503
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    r = await client.post("/v2/models/sum/infer", json=body)
    assert r.status_code == 200 and r.json()["model_version"] == "2"  # highest version by default
    r = await client.post("/v2/models/sum/versions/1/infer", json=body)
    assert r.json()["model_version"] == "1"
    r = await client.post("/v2/models/broken/infer", json=body)
    assert r.status_code == 503 and "failed" in r.json()["error"]


async def test_unload_and_load_need_the_management_token(
    client: httpx.AsyncClient, fake_loader: list[Path]
) -> None:
    r = await client.post("/v2/repository/models/other/unload")
    assert r.status_code == 401
    assert (await client.post("/v2/repository/models/other/unload", headers=TOKEN)).status_code == 200
    assert (await client.get("/v2/models/other")).status_code == 404
    index = {r["name"]: r for r in (await client.post("/v2/repository/index")).json()}
    assert index["other"]["state"] == "UNAVAILABLE" and index["other"]["reason"] == "unloaded"
    # a deliberate unload leaves no deepserve_model_ready series at 0 (the not-ready alert would fire)
    assert 'deepserve_model_ready{model="other"' not in (await client.get("/metrics")).text
    before = len(fake_loader)
    assert (await client.post("/v2/repository/models/other/load", headers=TOKEN)).status_code == 200
    assert len(fake_loader) == before + 1 and (await client.get("/v2/models/other/ready")).status_code == 200
    assert 'deepserve_model_ready{model="other",version="1"} 1.0' in (await client.get("/metrics")).text


@pytest.mark.parametrize("name", ["missing", "..", "a..b", "http:%2F%2Fevil"])
async def test_load_only_from_the_store(client: httpx.AsyncClient, name: str) -> None:
    r = await client.post(f"/v2/repository/models/{name}/load", headers=TOKEN)
    assert r.status_code in (400, 404), r.text


async def test_load_refuses_uploaded_files(client: httpx.AsyncClient) -> None:
    body = {"parameters": {"file:1/model.onnx": "AAAA"}}
    r = await client.post("/v2/repository/models/sum/load", headers=TOKEN, json=body)
    assert r.status_code == 400 and "model store" in r.json()["error"]


@pytest.mark.parametrize("name", ["../etc", "a/b", "http://x", "", ".hidden", "a..b"])
def test_model_names_are_plain(name: str) -> None:
    with pytest.raises(InvalidRequestError):
        check_model_name(name)


def test_settings_environment_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPSERVE_HTTP_PORT", "9000")
    monkeypatch.setenv("DEEPSERVE_MODELS", '{"sum": {"precision": "fp16", "max_batch_size": 4}}')
    monkeypatch.setenv("DEEPSERVE_PREFERRED_BATCH_SIZES", "[8, 4, 4]")
    settings = Settings()
    assert settings.http_port == 9000 and settings.grpc_port == 8001 and settings.drain_timeout_s == 30
    assert settings.host == "127.0.0.1" and settings.preferred_batch_sizes == [4, 8]
    assert settings.override("sum").precision == "fp16" and settings.override("x").precision is None
    with pytest.raises(ValidationError, match="MANAGEMENT_TOKEN"):
        Settings(enable_management=True)
    with pytest.raises(ValidationError):
        Settings(models={"m": {"precision": "fp8"}})


async def test_ready_with_failed_models_is_opt_in(tmp_path: Path, fake_loader: list[Path]) -> None:
    store = _write_store(tmp_path)
    strict = Registry(Settings(model_store=store), Metrics(CollectorRegistry()))
    lenient = Registry(
        Settings(model_store=store, ready_with_failed_models=True), Metrics(CollectorRegistry())
    )
    for registry in (strict, lenient):
        await registry.load_store()
    assert not strict.ready and lenient.ready
    await strict.stop(1.0)
    await lenient.stop(1.0)


async def test_per_model_override_caps_the_batch(tmp_path: Path, fake_loader: list[Path]) -> None:
    settings = Settings(model_store=_write_store(tmp_path), models={"sum": {"max_batch_size": 2}})
    registry = Registry(settings, Metrics(CollectorRegistry()))
    await registry.load_store()
    batcher = registry.get("sum").batcher
    assert batcher is not None and batcher.max_batch_size == 2
    other = registry.get("other").batcher
    assert other is not None and other.max_batch_size == 8  # model.json's own limit caps the default 32
    await registry.stop(1.0)
