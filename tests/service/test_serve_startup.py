"""`deepserve serve` refusing to start: one line that says why and what to do, no traceback, a
non-zero exit, and nothing started (no model loads behind a port that could not be bound)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deepserve.service", "--host", "127.0.0.1", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("which", ["http", "grpc"])
def test_a_taken_port_is_one_line_with_the_way_out(which: str, taken_port: int, tmp_path: Path) -> None:
    ports = {"http": _free_port(), "grpc": _free_port(), which: taken_port}
    http, grpc = str(ports["http"]), str(ports["grpc"])
    done = _serve("--store", str(tmp_path), "--http-port", http, "--grpc-port", grpc)
    assert done.returncode == 1, done.stderr
    assert f"cannot bind {'HTTP' if which == 'http' else 'gRPC'}" in done.stderr
    assert "--http-port" in done.stderr and "Traceback" not in done.stderr
    assert "serving" not in done.stderr  # it never claimed to serve


def test_a_store_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-store"
    done = _serve("--store", str(missing), "--http-port", str(_free_port()), "--grpc-port", "0")
    assert done.returncode == 2
    assert "does not exist" in done.stderr and str(missing) in done.stderr and "Traceback" not in done.stderr
