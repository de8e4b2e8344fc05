"""TorchServe's management API on its own port: register a .mar from the store, infer, unregister.

One real server for the module (``deepserve serve`` with management on, an inference token and a
management token). Its store holds ``affine`` (an ONNX file imported before start) and, at the
top, the archives a TorchServe user would drop into ``--model-store``: ``shout.mar`` and
``echo.mar`` (a ``handle(data, context)`` entry point, no torchvision) and ``boom.mar`` (a handler
that fails to load). Responses are compared, keys and types, with the examples of TorchServe's
docs/management_api.md, written out below.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from deepserve.imports import ImportOptions, import_source
from deepserve.service.__main__ import _ManagementServer
from deepserve.service.dataplane import DataPlane
from deepserve.service.management_api import create_management_app
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings
from tests.e2e.conftest import REPO, free_port, start_server, stop_server
from tests.imports.archives import SHOUT, build_mar
from tests.imports.graphs import affine_onnx

pytestmark = pytest.mark.e2e

MANAGEMENT, INFERENCE = "management-secret", "inference-secret"
BOOM = "raise RuntimeError('this handler cannot load')\n\n\ndef handle(data, context):\n    return data\n"

# -- TorchServe's documented answers (docs/management_api.md), as literals ------------------------
REGISTERED = {"status": 'Model "squeezenet1_1" Version: 1.0 registered with 1 initial workers'}
PROCESSING = {"status": "Processing worker updates..."}
SCALED = {"status": "Workers scaled to 3 for model: noop"}
UNREGISTERED = {"status": 'Model "noop" unregistered'}
LISTED = {
    "nextPageToken": "4",
    "models": [
        {"modelName": "noop", "modelUrl": "noop-v1.0"},
        {"modelName": "noop_v0.1", "modelUrl": "noop-v0.1"},
    ],
}
DESCRIBED = [
    {
        "modelName": "noop-customized",
        "modelVersion": "1.0",
        "modelUrl": "noop-customized.mar",
        "runtime": "python",
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": 1,
        "maxBatchDelay": 100,
        "loadedAtStartup": False,
        "workers": [
            {
                "id": "9010",
                "startTime": "2022-02-08T11:03:20.974Z",
                "status": "READY",
                "memoryUsage": 0,
                "pid": 98972,
                "gpu": False,
                "gpuUsage": "N/A",
            }
        ],
        "jobQueueStatus": {"remainingCapacity": 100, "pendingRequests": 0},
    }
]
ERROR = {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: noop"}


def assert_shaped_like(ours: Any, example: Any) -> None:
    """Same keys at every level, same JSON types (a bool is not an int), lists item by item."""
    assert type(ours) is type(example), (ours, example)
    if isinstance(example, dict):
        assert ours.keys() == example.keys(), (sorted(ours), sorted(example))
        for key in example:
            assert_shaped_like(ours[key], example[key])
    elif isinstance(example, list):
        for item in ours:
            assert_shaped_like(item, example[0])


@dataclass
class Managed:
    """The server, and where its management API listens."""

    server: Managed
    management: str

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def store(self) -> Path:
        return self.server.store


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Managed]:
    root = tmp_path_factory.mktemp("management")
    store = root / "store"
    import_source(affine_onnx(root / "affine.onnx", "batch"), ImportOptions(store=store, name="affine"))
    for name, code in (("shout", SHOUT), ("echo", SHOUT), ("boom", BOOM)):
        (root / f"{name}.py").write_text(code)
        build_mar(store, name, f"{root / name}:handle")
    shutil.copy(store / "shout.mar", root / "outside.mar")
    os.symlink(root / "outside.mar", store / "link.mar")
    env = {"DEEPSERVE_ENABLE_MANAGEMENT": "true", "DEEPSERVE_MANAGEMENT_TOKEN": MANAGEMENT,
           "DEEPSERVE_AUTH_TOKEN": INFERENCE, "DEEPSERVE_MANAGEMENT_PORT": str(free_port())}  # fmt: skip
    running = start_server(store, root / "server.log", **env)
    yield Managed(running, f"http://127.0.0.1:{env['DEEPSERVE_MANAGEMENT_PORT']}")
    assert stop_server(running) == 0  # drained and stopped with the management server


def manage(
    server: Managed, method: str, path: str, token: str | None = MANAGEMENT, **kw: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, server.management + path, headers=headers, timeout=60, **kw)


def predict(server: Managed, model: str, text: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {INFERENCE}", "content-type": "text/plain"}
    return httpx.post(f"{server.base_url}/predictions/{model}", content=text, headers=headers, timeout=60)


def test_register_infer_describe_unregister(server: Managed) -> None:
    params = {"url": "shout.mar", "initial_workers": "1", "synchronous": "true", "batch_size": "4",
              "max_batch_delay": "20"}  # fmt: skip
    registered = manage(server, "POST", "/models", params=params)
    assert registered.status_code == 200, registered.text
    assert_shaped_like(registered.json(), REGISTERED)
    assert registered.json() == {"status": 'Model "shout" Version: 1 registered with 1 initial workers'}

    answer = predict(server, "shout", "hello")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"shout": "HELLO", "params": {}, "model": "shout"}

    [described] = manage(server, "GET", "/models/shout").json()
    assert_shaped_like([described], DESCRIBED)
    assert (described["modelName"], described["modelVersion"], described["modelUrl"]) == (
        "shout",
        "1",
        "shout.mar",
    )
    assert (described["batchSize"], described["maxBatchDelay"]) == (4, 20)  # written into its model.json
    assert described["loadedAtStartup"] is False and described["workers"][0]["status"] == "READY"
    assert manage(server, "GET", "/models/shout/1").json() == [described]

    listed = manage(server, "GET", "/models").json()
    assert_shaped_like(listed, {"models": LISTED["models"]})
    assert {"modelName": "shout", "modelUrl": "shout.mar"} in listed["models"]

    gone = manage(server, "DELETE", "/models/shout/1")
    assert gone.status_code == 200 and gone.json() == {"status": 'Model "shout" unregistered'}
    assert_shaped_like(gone.json(), UNREGISTERED)
    assert predict(server, "shout", "hello").status_code == 404
    missing = manage(server, "GET", "/models/shout")
    assert missing.status_code == 404
    assert_shaped_like(missing.json(), ERROR)
    assert missing.json()["type"] == "ModelNotFoundException"
    assert (server.store / "shout" / "1" / "model.json").is_file()  # unregistered, not deleted


CALLS = [("GET", "/models"), ("POST", "/models?url=echo.mar"), ("GET", "/models/affine"),
         ("DELETE", "/models/affine"), ("PUT", "/models/affine?min_worker=1"), ("OPTIONS", "/")]  # fmt: skip


def test_every_call_needs_the_management_token(server: Managed) -> None:
    before = sorted(p.name for p in server.store.iterdir())
    for token in (None, INFERENCE, "wrong"):
        for method, path in CALLS:
            answer = manage(server, method, path, token=token)
            assert answer.status_code == 401, (method, path, token, answer.text)
            assert_shaped_like(answer.json(), ERROR)
            assert answer.headers["www-authenticate"] == "Bearer"
    assert sorted(p.name for p in server.store.iterdir()) == before  # nothing was imported
    assert predict(server, "affine", "x").status_code != 404  # and nothing unloaded


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://example.com/squeezenet.mar", "is a URL"),
        ("https://torchserve.pytorch.org/mar_files/squeezenet1_1.mar", "CVE-2023-43654"),
        ("s3://bucket/model.mar", "is a URL"),
        ("file:///etc/passwd", "is a URL"),
        ("/etc/passwd", "absolute path"),
        ("~/model.mar", "absolute path"),
        ("../outside.mar", "'..'"),
        ("sub/../../outside.mar", "'..'"),
        ("link.mar", "leads out of the model store"),
        ("..\\outside.mar", "backslashes"),
        ("", "url is required"),
        ("affine/1", "register it as url=affine"),
        (".", "the model store itself"),
    ],
)
def test_urls_outside_the_store_are_refused(server: Managed, url: str, why: str) -> None:
    answer = manage(server, "POST", "/models", params={"url": url})
    assert answer.status_code == 400, answer.text
    assert answer.json()["type"] == "BadRequestException" and why in answer.json()["message"]


def test_a_missing_archive_is_404_and_a_served_store_model_409(server: Managed) -> None:
    missing = manage(server, "POST", "/models", params={"url": "nope.mar"})
    assert missing.status_code == 404 and "copy the archive there" in missing.json()["message"]
    served = manage(server, "POST", "/models", params={"url": "affine"})
    assert served.status_code == 409 and served.json()["type"] == "ConflictStatusException"


def test_a_store_model_unregisters_and_registers_again(server: Managed) -> None:
    assert manage(server, "DELETE", "/models/affine").status_code == 200
    assert manage(server, "GET", "/models/affine").status_code == 404
    again = manage(server, "POST", "/models", params={"url": "affine", "initial_workers": "1"})
    assert again.json() == {"status": 'Model "affine" Version: 1 registered with 1 initial workers'}
    [described] = manage(server, "GET", "/models/affine/all").json()
    assert described["modelUrl"] == "affine" and described["workers"][0]["status"] == "READY"


def test_scaling_answers_as_torchserve_within_one_worker(server: Managed) -> None:
    accepted = manage(server, "PUT", "/models/affine?min_worker=1")
    assert accepted.status_code == 202 and accepted.json() == PROCESSING
    synced = manage(server, "PUT", "/models/affine/1?min_worker=1&max_worker=4&synchronous=true")
    assert synced.status_code == 200 and synced.json() == {
        "status": "Workers scaled to 1 for model: affine, version: 1"
    }
    assert_shaped_like(synced.json(), SCALED)
    refusals = {"min_worker=3": "min_worker=3 cannot be met", "min_worker=0": "DELETE /models/affine",
                "min_worker=2&max_worker=1": "max_worker cannot be less than min_worker"}  # fmt: skip
    for query, why in refusals.items():
        refused = manage(server, "PUT", f"/models/affine?{query}")
        assert refused.status_code == 400 and why in refused.json()["message"], refused.text
    assert manage(server, "PUT", "/models/affine/1/set-default").status_code == 200
    unknown = manage(server, "PUT", "/models/affine/9?min_worker=1")
    assert unknown.status_code == 404 and unknown.json()["type"] == "ModelVersionNotFoundException"


def test_listing_pages_as_torchserve(server: Managed) -> None:
    everything = [m["modelName"] for m in manage(server, "GET", "/models").json()["models"]]
    seen, token = [], "0"
    while token is not None:
        page = manage(server, "GET", f"/models?limit=1&next_page_token={token}").json()
        seen += [m["modelName"] for m in page["models"]]
        token = page.get("nextPageToken")
    assert seen == everything == sorted(everything) and everything
    assert manage(server, "GET", "/models?limit=x").status_code == 400


def test_a_handler_that_fails_to_load_leaves_nothing(server: Managed) -> None:
    answer = manage(server, "POST", "/models", params={"url": "boom.mar", "initial_workers": "1"})
    assert answer.status_code == 500 and answer.json()["type"] == "InternalServerException", answer.text
    assert "this handler cannot load" in answer.json()["message"]
    assert not (server.store / "boom").exists()
    assert manage(server, "GET", "/models/boom").status_code == 404


def test_asynchronous_registration_from_a_json_body(server: Managed) -> None:
    answer = manage(
        server, "POST", "/models", json={"url": "echo.mar", "synchronous": False, "initial_workers": 1}
    )
    assert answer.status_code == 202 and answer.json() == PROCESSING
    deadline = time.monotonic() + 30
    while not _serving(server, "echo") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert predict(server, "echo", "async").json()["shout"] == "ASYNC"
    assert manage(server, "DELETE", "/models/echo").status_code == 200


def _serving(server: Managed, model: str) -> bool:
    described = manage(server, "GET", f"/models/{model}")
    return described.status_code == 200 and [w["status"] for w in described.json()[0]["workers"]] == ["READY"]


def test_refused_while_draining_after_the_token(tmp_path: Path) -> None:
    settings = Settings(model_store=tmp_path, enable_management=True, management_token=MANAGEMENT)
    plane = DataPlane(settings, Registry(settings, Metrics(CollectorRegistry())))
    app = create_management_app(plane)

    async def call(token: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://management") as client:
            return await client.get("/models", headers=headers)

    assert asyncio.run(call(MANAGEMENT)).json() == {"models": []}
    plane.begin_drain()
    assert asyncio.run(call(None)).status_code == 401
    draining = asyncio.run(call(MANAGEMENT))
    assert draining.status_code == 503 and draining.json()["type"] == "ServiceUnavailableException"
    plane.stage.close()


def test_served_only_when_enabled_and_given_a_port(tmp_path: Path) -> None:
    assert _ManagementServer.bind(Settings(model_store=tmp_path)) == []
    off = Settings(model_store=tmp_path, enable_management=True, management_token="t", management_port=0)
    assert _ManagementServer.bind(off) == []


def test_a_taken_management_port_stops_the_start_in_one_line(tmp_path: Path) -> None:
    import_source(affine_onnx(tmp_path / "affine.onnx", "batch"), ImportOptions(store=tmp_path / "store"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**os.environ, "DEEPSERVE_ENABLE_MANAGEMENT": "true", "DEEPSERVE_MANAGEMENT_TOKEN": "t",
               "DEEPSERVE_MANAGEMENT_PORT": str(taken.getsockname()[1])}  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "deepserve.service", "--store", str(tmp_path / "store"),
             "--http-port", str(free_port()), "--grpc-port", "0"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "DEEPSERVE_MANAGEMENT_PORT=0 turns it off" in done.stderr
