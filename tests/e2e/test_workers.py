"""``deepserve serve --workers 2 MODEL.onnx`` as users run it: two processes on one HTTP and one
gRPC port serving a source the supervisor imported once, one /metrics view, readiness for the
whole server, a dead worker replaced, SIGTERM draining all.

Which worker answered is read from the metrics themselves, not from a test-only hook: each
worker writes its own counter file into the multiprocess folder, so a request counted in a
worker's file was served by that worker, and a scrape of any worker must add them all up."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import REPO, Server, free_port, start_server
from tests.imports.graphs import FEATURES, affine_onnx

pytestmark = pytest.mark.e2e

MODEL = "affine"  # named after its file
ROW = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, FEATURES], "data": [1.0] * FEATURES}]}
HTTP_REQUESTS, GRPC_REQUESTS = 40, 8


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("workers")
    (root / "store").mkdir()
    model = affine_onnx(root / f"{MODEL}.onnx", "batch")
    server = start_server(root / "store", root / "server.log", args=(str(model), "--workers", "2"))
    yield server
    if server.process.poll() is None:  # a test failed before stopping it
        server.process.kill()
        server.process.wait()


def _workers(server: Server) -> list[psutil.Process]:
    return psutil.Process(server.process.pid).children()


def _served_by(workers: list[psutil.Process]) -> dict[int, float]:
    """HTTP requests each worker counted in its own file of the multiprocess folder."""
    folder = Path(workers[0].environ()["PROMETHEUS_MULTIPROC_DIR"])
    counts = {}
    for worker in workers:
        [family] = [m for m in MultiProcessCollector.merge([str(folder / f"counter_{worker.pid}.db")])
                    if m.name == "deepserve_requests"]  # fmt: skip
        counts[worker.pid] = sum(s.value for s in family.samples if s.labels["protocol"] == "v2-http")
    return counts


def _answered(text: str, protocol: str) -> float:
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "deepserve_requests"]
    return sum(s.value for s in family.samples if s.labels == {"model": MODEL, "protocol": protocol,
                                                               "code": "200"})  # fmt: skip


def _ready(server: Server) -> httpx.Response:
    # a client of its own each time: a new connection, which the kernel gives either worker
    return httpx.get(f"{server.base_url}/v2/health/ready", timeout=5)


def test_two_workers_serve_one_port_and_one_metrics_view(served: Server) -> None:
    workers = _workers(served)
    assert len(workers) == 2
    for _ in range(HTTP_REQUESTS):  # each on a new connection
        httpx.post(f"{served.base_url}/v2/models/{MODEL}/infer", json=ROW, timeout=10).raise_for_status()
    for _ in range(GRPC_REQUESTS):
        with grpcclient.InferenceServerClient(served.grpc) as client:
            features = grpcclient.InferInput("x", [1, FEATURES], "FP32")
            features.set_data_from_numpy(np.ones((1, FEATURES), np.float32))
            client.infer(MODEL, [features])
            assert client.is_server_ready()  # gRPC health and readiness, from either worker
    by_worker = _served_by(workers)
    assert all(count > 0 for count in by_worker.values()), by_worker  # both took connections
    assert sum(by_worker.values()) == HTTP_REQUESTS
    for _ in range(12):  # scrapes on new connections, so both workers answer some: each the whole view
        text = httpx.get(f"{served.base_url}/metrics", timeout=5).raise_for_status().text
        assert _answered(text, "v2-http") == HTTP_REQUESTS and _answered(text, "v2-grpc") == GRPC_REQUESTS
        assert 'pid="' not in text  # every gauge combines its workers: no per-process series
        assert _ready(served).status_code == 200


def test_a_second_server_on_the_same_ports_is_refused(served: Server) -> None:
    port = served.http.rsplit(":", 1)[1]
    done = subprocess.run(
        [sys.executable, "-m", "deepserve.service", "--store", str(served.store), "--host", "127.0.0.1",
         "--http-port", port, "--grpc-port", str(free_port()), "--workers", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"cannot bind HTTP on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr and "serving" not in done.stderr


def test_a_grpc_port_a_foreign_reuseport_server_holds_is_refused(served: Server) -> None:
    with socket.socket() as foreign:  # would share its port with any socket of this user that asks
        foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        taken = foreign.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "deepserve.service", "--store", str(served.store), "--host", "127.0.0.1",
             "--http-port", str(free_port()), "--grpc-port", str(taken), "--workers", "2"],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"cannot bind gRPC on 127.0.0.1:{taken}" in done.stderr and "Traceback" not in done.stderr


def test_a_worker_that_dies_is_replaced_and_the_server_unready_meanwhile(served: Server) -> None:
    before = _workers(served)
    answered = _answered(httpx.get(f"{served.base_url}/metrics", timeout=5).text, "v2-http")
    before[0].kill()
    said = _poll(lambda: _ready(served), lambda r: r.status_code == 503, within=10)
    assert "worker 1 of 2 is" in said.text  # the other worker answers for the whole server
    _poll(lambda: _ready(served), lambda r: r.status_code == 200, within=60)
    after = _workers(served)
    assert len(after) == 2 and before[0].pid not in {w.pid for w in after}
    assert before[1].pid in {w.pid for w in after}  # its sibling served on throughout
    # the dead worker's counts stay in the total
    assert _answered(httpx.get(f"{served.base_url}/metrics", timeout=5).text, "v2-http") == answered


def test_sigterm_drains_every_worker_and_exits_0(served: Server) -> None:
    workers = _workers(served)
    folder = Path(workers[0].environ()["PROMETHEUS_MULTIPROC_DIR"])
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=30) == 0, served.log.read_text()[-3000:]
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    assert not folder.parent.exists()  # the run folder and its metrics files are gone


def test_workers_whose_supervisor_is_killed_drain_and_exit(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    model = affine_onnx(tmp_path / f"{MODEL}.onnx", "batch")
    server = start_server(tmp_path / "store", tmp_path / "server.log", args=(str(model), "--workers", "2"))
    workers = _workers(server)
    folder = Path(workers[0].environ()["PROMETHEUS_MULTIPROC_DIR"]).parent
    try:
        server.process.kill()  # no chance to stop them: the pipe to each worker closes
        server.process.wait()
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, server.log.read_text()[-3000:]
        assert server.log.read_text().count("its supervisor is gone; draining") == 2
    finally:
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
        shutil.rmtree(folder, ignore_errors=True)  # its supervisor could not remove it


def _poll(
    get: Callable[[], httpx.Response], until: Callable[[httpx.Response], bool], *, within: float
) -> httpx.Response:
    deadline = time.monotonic() + within
    while True:
        try:
            answer = get()
            if until(answer):
                return answer
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.02)
