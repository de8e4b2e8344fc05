"""The TorchServe adapter inside a real TorchServe 0.12: the .mar that `deepserve export --mar`
builds, registered in TorchServe, answers what `deepserve serve` answers for the same curl calls.

TorchServe (Java frontend + Python workers) is started once for the module on loopback, with its
logs in a temporary folder, and the session's deepserve server is the reference. Skips where
TorchServe or Java is missing (`pip install 'deepserve[torchserve]'`; Java 17 is on the
project's machines).
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from deepserve.export.mar import archiver, build_mar
from tests.e2e.conftest import Server, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.tools, pytest.mark.slow]
MODELS = ("tabular-mlp", "digits-cnn", "docs-classifier")


@dataclass
class TorchServe:
    url: str
    log_dir: Path

    def log_tail(self, chars: int = 3000) -> str:
        logs = sorted(self.log_dir.rglob("*.log"))
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in logs)


@pytest.fixture(scope="module")
def torchserve(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    exe = shutil.which("torchserve") or str(Path(sys.executable).with_name("torchserve"))
    if not Path(exe).is_file() or shutil.which("java") is None or archiver() is None:
        pytest.skip("needs torchserve, torch-model-archiver (pip install 'deepserve[torchserve]') and java")
    home = tmp_path_factory.mktemp("torchserve")
    marks = home / "model-store"
    for name in MODELS:
        version = next(iter(sorted((server.store / name).iterdir())))
        assert build_mar(version, out_dir=marks) is not None
    port, mgmt = free_port(), free_port()
    config = home / "config.properties"
    config.write_text(
        f"inference_address=http://127.0.0.1:{port}\nmanagement_address=http://127.0.0.1:{mgmt}\n"
        f"metrics_address=http://127.0.0.1:{free_port()}\ndisable_token_authorization=true\n"
        f"enable_model_api=true\nmodel_store={marks}\ndefault_workers_per_model=1\n"
    )
    env = {**os.environ, "LOG_LOCATION": str(home / "logs"), "METRICS_LOCATION": str(home / "logs")}
    cmd = [exe, "--start", "--foreground", "--ts-config", str(config), "--model-store", str(marks), "--ncs"]
    with (home / "stdout.log").open("wb") as sink:  # cwd too: TorchServe writes logs/ where it runs
        process = subprocess.Popen(cmd, cwd=home, env=env, stdout=sink, stderr=subprocess.STDOUT)
    running = TorchServe(f"http://127.0.0.1:{port}", home)
    try:
        _wait_ping(running, process)
        with httpx.Client(base_url=f"http://127.0.0.1:{mgmt}", timeout=180) as manage:
            for name in MODELS:
                params = {"url": f"{name}.mar", "model_name": name, "batch_size": 8, "max_batch_delay": 50,
                          "initial_workers": 1, "synchronous": "true"}  # fmt: skip
                answer = manage.post("/models", params=params)
                assert answer.status_code == 200, answer.text + running.log_tail()
        yield running
    finally:
        subprocess.run([exe, "--stop"], cwd=home, env=env, capture_output=True, timeout=60)
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_ping(ts: TorchServe, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "TorchServe exited:\n" + ts.log_tail()
        try:
            if httpx.get(f"{ts.url}/ping", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError("TorchServe did not answer /ping in 120 s:\n" + ts.log_tail())


def _row(server: Server) -> list[float]:
    spec = json.loads(next((server.store / "tabular-mlp").glob("*/model.json")).read_text())
    width = spec["inputs"][0]["shape"][-1]
    return [round(0.1 * i, 3) for i in range(width)]


def _png() -> bytes:
    from PIL import Image

    pixels = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


Pair = tuple[httpx.Response, httpx.Response]


def _both(server: Server, ts: TorchServe, path: str, **request: object) -> Pair:
    ours = httpx.post(f"{server.base_url}{path}", timeout=30, **request)  # type: ignore[arg-type]
    theirs = httpx.post(f"{ts.url}{path}", timeout=30, **request)  # type: ignore[arg-type]
    return ours, theirs


def test_same_answers_as_deepserve_for_the_same_curl(server: Server, torchserve: TorchServe) -> None:
    row = _row(server)
    names = json.loads(next((server.store / "tabular-mlp").glob("*/model.json")).read_text())
    features = names["preprocessing"]["features"]
    cases = [
        ("/predictions/tabular-mlp", {"json": row}),  # curl -H 'Content-Type: application/json' -d '[...]'
        ("/predictions/tabular-mlp", {"json": dict(zip(features, row, strict=True))}),  # named features
        ("/predictions/tabular-mlp", {"files": {"data": ("row.json", json.dumps(row), "application/json")}}),
        ("/predictions/digits-cnn", {"content": _png()}),  # curl --data-binary @digit.png
        ("/predictions/digits-cnn", {"files": {"data": ("d.png", _png(), "image/png")}}),  # curl -F data=@
        ("/predictions/docs-classifier", {"content": b"The module provides functions for sockets."}),
    ]
    for path, request in cases:
        ours, theirs = _both(server, torchserve, path, **request)
        assert ours.status_code == theirs.status_code == 200, (path, ours.text, theirs.text)
        assert ours.json() == pytest.approx(theirs.json(), rel=1e-4), path
        assert theirs.headers["content-type"].startswith("application/json")


def test_a_bad_request_fails_alone_in_a_torchserve_batch(server: Server, torchserve: TorchServe) -> None:
    row = _row(server)
    bodies = [row] * 7 + [row[:3]]  # the last one has too few features
    url = f"{torchserve.url}/predictions/tabular-mlp"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda body: httpx.post(url, json=body, timeout=30), bodies))
    assert [a.status_code for a in answers] == [200] * 7 + [400], [a.text for a in answers]
    assert "feature" in answers[-1].text
    ours = httpx.post(f"{server.base_url}/predictions/tabular-mlp", json=row[:3])
    assert ours.status_code == 400


def test_non_ascii_errors_keep_the_worker_alive(server: Server, torchserve: TorchServe) -> None:
    # TorchServe frames the status phrase by its length in characters, then writes UTF-8 bytes: a
    # non-ASCII phrase corrupted the frame and killed the worker (TooLongFrameException)
    spec = json.loads(next((server.store / "tabular-mlp").glob("*/model.json")).read_text())
    row = dict(zip(spec["preprocessing"]["features"], _row(server), strict=True))
    url = f"{torchserve.url}/predictions/tabular-mlp"
    bad = httpx.post(url, json={**row, "größe — ×": 1.0}, timeout=30)
    assert bad.status_code == 400, bad.text
    assert "größe — ×" in bad.json()["message"]  # the body keeps the message as it was
    good = httpx.post(url, json=row, timeout=30)
    assert good.status_code == 200, good.text  # a live worker answers, not 503 while one restarts


def test_form_posts_and_empty_bodies_get_a_clear_400(server: Server, torchserve: TorchServe) -> None:
    for request in ({"data": {"a": "1"}}, {"content": b""}):  # curl -d 'a=1'; curl -X POST
        ours, theirs = _both(server, torchserve, "/predictions/tabular-mlp", **request)
        assert ours.status_code == theirs.status_code == 400, (ours.text, theirs.text)
        for answer in (ours, theirs):
            message = answer.json()["message"]
            assert "JSON" in message or "empty" in message, message
