"""SIGTERM under load: readiness drops, in-flight requests are answered, the process exits 0."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import start_server, stop_server

pytestmark = pytest.mark.e2e


def test_sigterm_drains_and_exits_zero(e2e_store: Path, tmp_path: Path) -> None:
    spec = next(p for p in sorted(e2e_store.glob("*/1/model.json")) if "features" in p.read_text())
    name = spec.parent.parent.name
    width = int(json.loads(spec.read_text())["inputs"][0]["shape"][1])
    body = {"inputs": [{"name": "features", "shape": [1, width], "datatype": "FP32", "data": [0.5] * width}]}
    server = start_server(e2e_store, tmp_path / "server.log")
    answers: dict[int, int] = {}
    unanswered: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            while not stop.is_set():
                try:
                    code = http.post(f"/v2/models/{name}/infer", json=body).status_code
                except httpx.ConnectError:
                    return  # the listener is closed: not accepted, nothing lost
                except httpx.TransportError as exc:
                    unanswered.append(repr(exc))  # accepted, then dropped: what must never happen
                    return
                answers[code] = answers.get(code, 0) + 1
                if code == 503:
                    return

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    code = stop_server(server)
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    assert code == 0, server.log.read_text()[-2000:]
    assert time.monotonic() - t0 < 10
    assert answers.get(200, 0) > 0 and set(answers) <= {200, 503}, answers
    assert not unanswered, unanswered
