"""Helpers to run `python -m deepserve.service` on free loopback ports, against a model store.

The session-wide `e2e_store` and `server` fixtures live in tests/conftest.py, so every test
package (e2e, deploy, bench) shares ONE server.

``_tiny_gpt`` writes an untrained byte GPT store for tests that need a generation model of a
known size.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    http: str  # host:port
    grpc: str
    store: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.http}"

    def models(self, task: str | None = None) -> list[dict[str, object]]:
        specs = [json.loads(p.read_text()) for p in sorted(self.store.glob("*/*/model.json"))]
        return [s for s in specs if task is None or s["task"] == task]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tiny_gpt(root: Path, ctx: int = 32, layers: int = 2, heads: int = 2, head_dim: int = 8) -> None:
    """An untrained byte GPT with the explicit-KV-cache graph, exported as export/ does."""
    import torch

    from deepserve.export.generative_plans import write_gpt_version
    from deepserve.models import build_model

    torch.manual_seed(0)
    gpt = build_model(
        "gpt", vocab_size=256, context_length=ctx, n_layer=layers, n_head=heads, d_model=heads * head_dim
    )
    write_gpt_version(gpt.eval(), root / "tiny-gpt" / "1", name="tiny-gpt")


def start_server(store: Path, log: Path, *, args: tuple[str, ...] = (), **env: str) -> Server:
    """``args``: more command-line arguments (e.g. sources to serve beside the store)."""
    http_port, grpc_port = free_port(), free_port()
    environ = {**os.environ, "DEEPSERVE_DRAIN_TIMEOUT_S": "10", **env}
    cmd = [sys.executable, "-m", "deepserve.service", "--store", str(store), "--host", "127.0.0.1",
           "--log-level", "warning",
           "--http-port", str(http_port), "--grpc-port", str(grpc_port), *args]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(cmd, cwd=REPO, env=environ, stdout=sink, stderr=subprocess.STDOUT)
    server = Server(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", store, process, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.base_url}/v2/health/ready", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server not ready in 90 s:\n{log.read_text()[-3000:]}")


def stop_server(server: Server) -> int:
    server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        return -9
