"""The parts of ``--workers`` that need no processes: the port check and reservation, the cores
divided among the workers, and readiness across workers through their shared board.
(tests/e2e/test_workers.py runs the real thing.)"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from deepserve.service import ports
from deepserve.service.dataplane import DataPlane
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings
from deepserve.service.worker_state import WorkerBoard, WorkerSpec, WorkerState
from deepserve.service.workers import worker_settings
from tests.service.fakes import SumHandler


@pytest.fixture(params=["plain", "SO_REUSEPORT"])
def foreign_listener(request: pytest.FixtureRequest) -> Iterator[int]:
    """A port another server listens on, with or without SO_REUSEPORT (same user, as a second
    deepserve --workers would be): its port."""
    with socket.socket() as sock:
        if request.param == "SO_REUSEPORT":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_port_another_server_listens_on_is_refused(foreign_listener: int) -> None:
    with pytest.raises(OSError, match=f"cannot bind HTTP on 127.0.0.1:{foreign_listener}: Address already"):
        ports.reserve("127.0.0.1", foreign_listener, "HTTP")


def test_a_reserved_port_is_shared_by_workers_only() -> None:
    held, port = ports.reserve("127.0.0.1", 0, "HTTP")
    try:
        assert port != 0
        # nobody listens yet: the reservation takes no connections
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        with pytest.raises(OSError, match="cannot bind gRPC"):  # a second --workers server
            ports.reserve("127.0.0.1", port, "gRPC")
        with pytest.raises(OSError, match="cannot bind HTTP"):  # a one-process server
            ports.bind_listeners("127.0.0.1", port, 16)
        workers = [ports.bind_listeners("127.0.0.1", port, 16, share=True) for _ in range(2)]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # a worker's listener took it
        for sockets in workers:
            for sock in sockets:
                sock.close()
    finally:
        for sock in held:
            sock.close()


def test_the_cores_are_divided_unless_set(tmp_path: Path) -> None:
    divided = worker_settings(Settings(model_store=tmp_path, workers=2), cores=8)
    assert (divided.threads, divided.codec_threads) == (4, 1)
    explicit = worker_settings(Settings(model_store=tmp_path, workers=2, threads=3, codec_threads=2), cores=8)
    assert (explicit.threads, explicit.codec_threads) == (3, 2)  # what was asked, for each worker
    crowded = worker_settings(Settings(model_store=tmp_path, workers=4), cores=2)
    assert (crowded.threads, crowded.codec_threads) == (1, 1)


def test_metrics_of_workers_need_the_multiprocess_folder_set_first(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        Metrics(CollectorRegistry(), multiprocess_dir=tmp_path)


async def _worker_plane(tmp_path: Path, index: int) -> DataPlane:
    settings = Settings(model_store=tmp_path, workers=2)
    registry = Registry(settings, Metrics(CollectorRegistry()))
    await registry.add_handler(SumHandler())
    return DataPlane(settings, registry, worker=WorkerSpec(index, 2, tmp_path))


async def test_every_worker_is_ready_only_when_all_are(tmp_path: Path) -> None:
    board = WorkerBoard.create(WorkerSpec(1, 2, tmp_path).board_path, 2)
    first, second = await _worker_plane(tmp_path, 1), await _worker_plane(tmp_path, 2)
    await first.start()
    await first.loaded()
    assert board.state(1) == WorkerState.READY
    assert not first.ready() and first.why_not_ready() == "worker 2 of 2 is starting"
    await second.start()
    await second.loaded()
    assert first.ready() and second.ready()
    await second.stop()  # one worker going: all say not ready until its replacement is
    assert not first.ready() and first.why_not_ready() == "worker 2 of 2 is draining"
    replacement = await _worker_plane(tmp_path, 2)
    await replacement.start()
    await replacement.loaded()
    assert first.ready()
    board.begin_drain()  # the supervisor's SIGTERM: not ready before a worker has its signal
    assert not first.ready() and first.why_not_ready() == "server is shutting down"
    await first.stop()
    await replacement.stop()
