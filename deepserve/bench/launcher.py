"""Start a server on loopback for a run (deepserve, the naive baseline, a peer), wait until ready, stop it.

Also reads a process tree's CPU time from /proc, so the report can say how much CPU the server
used next to the client's own (a peer such as Triton or TorchServe is several processes).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server did not become ready; the message carries the tail of its output."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    ready_s: float
    grpc_target: str | None = None
    own_group: bool = False  # started in a session of its own: stop the whole group it spawned

    def cpu_seconds(self) -> float:
        return process_tree_cpu_seconds(self.process.pid)

    def _signal(self, sig: int) -> None:
        try:
            if self.own_group:
                os.killpg(self.process.pid, sig)  # its group id is its pid (start_new_session)
            else:
                self.process.send_signal(sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(5)
        if self.own_group:
            self._signal(signal.SIGKILL)  # children that outlived their parent (a server binary it ran)


def process_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a live process (and its reaped children); 0 if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += [int(x) for x in task.read_text().split()]
        except OSError:
            continue
    return kids


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its live descendants (a server's workers, a binary it runs)."""
    total, todo, seen = 0.0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += process_cpu_seconds(p)
        todo += _children(p)
    return total


def _ready(url: str, path: str = "/v2/health/ready") -> bool:
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start(
    argv: list[str],
    url: str,
    log: Path,
    *,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
    grpc_target: str | None = None,
    python: str = sys.executable,
    ready_path: str = "/v2/health/ready",
    own_group: bool = False,
) -> Server:
    """Run ``python argv...`` and poll ``url`` + ``ready_path`` until 200 (or fail with its log).

    ``own_group``: start it in a new session, so stopping it also ends the processes it spawned."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen([python, *argv], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=own_group)  # fmt: skip
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            break
        if _ready(url, ready_path):
            return Server(proc, url, log, time.perf_counter() - t0, grpc_target, own_group)
        time.sleep(0.05)
    Server(proc, url, log, 0.0, own_group=own_group).stop()
    tail = log.read_text(errors="replace")[-2000:]
    raise ServerStartError(
        f"{' '.join(argv)} was not ready at {url} within {timeout:.0f}s "
        f"(exit code {proc.poll()}); its output ends with:\n{tail}"
    )


def start_deepserve(
    store: Path, log: Path, *, timeout: float = 120.0, env: dict[str, str] | None = None
) -> Server:
    """`python -m deepserve.service` on free loopback ports; ``env`` adds DEEPSERVE_* settings."""
    http, grpc = free_port(), free_port()
    argv = ["-m", "deepserve.service", "--store", str(store),
            "--http-port", str(http), "--grpc-port", str(grpc)]  # fmt: skip
    return start(
        argv, f"http://127.0.0.1:{http}", log, timeout=timeout, env=env, grpc_target=f"127.0.0.1:{grpc}"
    )


def start_naive(version_dir: Path, name: str, log: Path, *, threads: int | None = None) -> Server:
    port = free_port()
    argv = [
        "-m",
        "deepserve.bench.naive_server",
        "--version-dir",
        str(version_dir),
        "--name",
        name,
        "--port",
        str(port),
    ]
    if threads:
        argv += ["--threads", str(threads)]
    return start(argv, f"http://127.0.0.1:{port}", log, timeout=60)
