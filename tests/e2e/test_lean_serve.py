"""`pip install -e '.[serve]'` in a fresh venv serves the default store's ONNX models without torch.

The store is built in the dev venv (``quick_store``); only the server process is lean: it runs
``deepserve serve`` from the venv of ``tests/e2e/lean.py`` (built here when missing or stale), on
Python 3.11 and on a newer Python when the machine has one, answers KServe v2 over HTTP and gRPC
and OpenAI-style embeddings, serves a user's ONNX file given on its command line beside the
store, and on exit reports which modules it imported.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from tests.e2e import lean
from tests.e2e.conftest import Server, free_port, stop_server
from tests.imports.graphs import affine_onnx, ort_run

USER_MODEL = "user-affine"  # a user's ONNX file, served straight from the command line

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Runs `deepserve serve` (the console script's function); on SIGUSR1 writes sys.modules to a file.
BOOT = """
import json, signal, sys
out, args = sys.argv[1], sys.argv[2:]
def dump(*_):
    with open(out + ".tmp", "w") as f:
        json.dump(sorted(sys.modules), f)
    __import__("os").replace(out + ".tmp", out)
signal.signal(signal.SIGUSR1, dump)
from deepserve.cli import main
raise SystemExit(main(["serve", *args]))
"""
NOT_IMPORTED = ("torch", "sklearn", "matplotlib", "onnx", "rich", "deepserve.export", "deepserve.models",
                "deepserve.training", "deepserve.bench")  # fmt: skip


def _pythons() -> list[Any]:
    newer = lean.newer_python()
    skip = pytest.mark.skip(reason=f"no Python {' / '.join(lean.NEWER)} on this machine")
    return [
        pytest.param(lean.base_python(), id=lean.tag(lean.base_python())),
        pytest.param(newer or "", id=lean.tag(newer) if newer else "newer", marks=() if newer else skip),
    ]


@pytest.fixture(scope="module", params=_pythons())
def lean_python(request: pytest.FixtureRequest) -> Path:
    return lean.ensure_venv(str(request.param))


@pytest.fixture(scope="module")
def lean_server(
    lean_python: Path, quick_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("lean")
    modules, log = tmp / "modules.json", tmp / "server.log"
    user_file = affine_onnx(tmp / "user.onnx", "batch")
    http_port, grpc_port = free_port(), free_port()
    cmd = [str(lean_python), "-I", "-c", BOOT, str(modules), str(user_file), "--name", USER_MODEL,
           "--store", str(quick_store), "--host", "127.0.0.1", "--log-level", "warning",
           "--http-port", str(http_port), "--grpc-port", str(grpc_port)]  # fmt: skip
    with log.open("wb") as sink:  # cwd outside the repository: the installed package runs
        process = subprocess.Popen(cmd, cwd=tmp, stdout=sink, stderr=subprocess.STDOUT)
    server = Server(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", quick_store, process, log)
    _wait_ready(server)
    yield server, modules
    code = stop_server(server)
    assert code == 0, f"lean server exited {code} on SIGTERM:\n{log.read_text()[-3000:]}"


def _wait_ready(server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"lean server exited {server.process.returncode}:\n{server.log.read_text()[-3000:]}"
            )
        try:
            if httpx.get(f"{server.base_url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.process.kill()
    raise RuntimeError(f"lean server not ready in {timeout:.0f} s:\n{server.log.read_text()[-3000:]}")


def _tabular(server: Server) -> tuple[str, int]:
    spec = next(s for s in server.models("classification") if s["inputs"][0]["name"] == "features")
    return str(spec["name"]), int(spec["inputs"][0]["shape"][1])  # type: ignore[index]


def test_the_serving_venv_has_no_torch(lean_python: Path) -> None:
    assert lean.installed_forbidden(lean_python) == []


def test_kserve_v2_http_and_grpc_answer_from_onnx(lean_server: tuple[Server, Path]) -> None:
    server, _ = lean_server
    name, width = _tabular(server)
    x = np.random.default_rng(0).normal(size=(2, width)).astype(np.float32)
    body = {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [2, width], "data": x.ravel().tolist()}]
    }
    answer = httpx.post(f"{server.base_url}/v2/models/{name}/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    logits = next(o for o in answer.json()["outputs"] if o["name"] == "logits")
    assert logits["shape"][0] == 2
    client = triton_grpc.InferenceServerClient(server.grpc)
    inp = triton_grpc.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(name, [inp], outputs=[triton_grpc.InferRequestedOutput("logits")])
    np.testing.assert_allclose(result.as_numpy("logits").ravel(), logits["data"], rtol=1e-5, atol=1e-6)
    client.close()


def test_a_users_onnx_file_is_served_beside_the_store(lean_server: tuple[Server, Path]) -> None:
    server, _ = lean_server
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": x.ravel().tolist()}]}
    answer = httpx.post(f"{server.base_url}/v2/models/{USER_MODEL}/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    [y] = answer.json()["outputs"]
    source = Path(str(server.log)).parent / "user.onnx"
    expected = ort_run(source, {"x": x})["y"]
    np.testing.assert_allclose(np.reshape(y["data"], y["shape"]), expected, rtol=1e-5, atol=1e-6)


def test_openai_embeddings_with_the_tokenizer(lean_server: tuple[Server, Path]) -> None:
    server, _ = lean_server
    body = {"model": "minilm", "input": ["hi", "there"]}
    answer = httpx.post(f"{server.base_url}/v1/embeddings", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["data"]) == 2


def test_no_torch_in_the_server_process(lean_server: tuple[Server, Path]) -> None:
    """Ready = every model of the store loaded; after an inference, torch and the training, export
    and bench code are still not imported."""
    server, modules = lean_server
    name, width = _tabular(server)
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, width], "data": [0.0] * width}]}
    assert httpx.post(f"{server.base_url}/v2/models/{name}/infer", json=body, timeout=30).status_code == 200
    user = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.0] * 4}]}
    answer = httpx.post(f"{server.base_url}/v2/models/{USER_MODEL}/infer", json=user, timeout=30)
    assert answer.status_code == 200, answer.text
    server.process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not modules.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    imported = set(json.loads(modules.read_text()))
    assert "deepserve.service.app" in imported and "onnxruntime" in imported
    leaked = [m for m in NOT_IMPORTED if m in imported or any(i.startswith(m + ".") for i in imported)]
    assert leaked == [], f"the serving process imported {leaked}"


def test_a_torch_only_model_says_what_to_install(
    lean_python: Path, quick_store: Path, tmp_path: Path
) -> None:
    """A model with only TorchScript / torch.export files: one clear error naming the extra."""
    vdir = tmp_path / "torch-only" / "1"
    shutil.copytree(quick_store / "tabular-mlp" / "1", vdir)
    spec = json.loads((vdir / "model.json").read_text())
    spec["name"], spec["variants"] = "torch-only", [v for v in spec["variants"] if v["format"] != "onnx"]
    (vdir / "model.json").write_text(json.dumps(spec))
    for onnx_file in vdir.glob("*.onnx"):
        onnx_file.unlink()
    code = "import sys, pathlib, deepserve.handlers as h; h.load_handler(pathlib.Path(sys.argv[1]))"
    out = subprocess.run(
        [str(lean_python), "-I", "-c", code, str(vdir)], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "ModelLoadError: model torch-only v1 has only TorchScript/torch.export variants" in last, (
        out.stderr
    )
    assert "pip install 'deepserve[train]'" in last


def test_store_build_names_what_to_install(lean_python: Path, tmp_path: Path) -> None:
    deepserve = lean_python.parent / "deepserve"
    out = subprocess.run(
        [str(deepserve), "store", "build", "--store", str(tmp_path / "store")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "pip install torch==2.13.0 'deepserve[serve,train,export,minilm]'" in out.stderr
    assert not (tmp_path / "store").exists()
