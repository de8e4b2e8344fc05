"""Your own handler (docs/handlers.md): imported with `deepserve import --handler`, served end to end.

One server for the module holds the documentation's example (read from docs/handlers.md, so the
page's code is the code under test), two models whose handlers import a helper module of the
same name, and one whose ``load`` raises: that one is UNAVAILABLE with its file and line while the
others serve.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from deepserve.imports import ImportOptions, import_source
from tests.e2e.conftest import REPO, Server, start_server, stop_server

pytestmark = pytest.mark.e2e

DOCS = REPO / "docs" / "handlers.md"
SCALE = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
SHIFT = np.array([0.5, 0.0, -0.5, 1.0], dtype=np.float32)

TWIN = """\
import numpy as np
from helpers import FACTOR

from deepserve.handlers.custom import CustomHandler
from deepserve.store import TensorSpec


class Twin(CustomHandler):
    inputs = [TensorSpec(name="x", datatype="FP32", shape=[-1, 2])]
    outputs = [TensorSpec(name="y", datatype="FP32", shape=[-1, 2])]

    def load(self):
        self.factor = FACTOR

    def predict_batch(self, items):
        return self.split({"y": self.concat(items)["x"] * self.factor}, items)
"""

RAISES_IN_LOAD = """\
from deepserve.handlers.custom import CustomHandler
from deepserve.store import TensorSpec


class Broken(CustomHandler):
    inputs = [TensorSpec(name="x", datatype="FP32", shape=[-1, 2])]
    outputs = [TensorSpec(name="y", datatype="FP32", shape=[-1, 2])]

    def load(self):
        raise FileNotFoundError("weights.bin is not in the model folder")

    def predict_batch(self, items):
        return items
"""


def doc_example() -> str:
    """The ```python block of docs/handlers.md that starts with `# handler.py`."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.DOTALL)
    [example] = [b for b in blocks if b.startswith("# handler.py\n")]
    assert len(example.splitlines()) <= 25, "the contract promises a ~20-line example"
    return example


def sample(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "deepserve.cli", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def folder(root: Path, name: str, files: dict[str, str]) -> Path:
    path = root / name
    path.mkdir(parents=True)
    for file, text in files.items():
        (path / file).write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("custom-handlers")
    store = root / "store"
    scaler = folder(root, "scaler", {"handler.py": doc_example()})
    np.savez(scaler / "weights.npz", scale=SCALE, shift=SHIFT)
    done = cli("import", str(scaler), "--handler", "handler.py:Scaler", "--store", str(store))
    assert done.returncode == 0, done.stderr
    for name, factor in (("twin-a", 2), ("twin-b", -3)):  # both import `helpers`: each gets its own
        source = folder(root, name, {"handler.py": TWIN, "helpers.py": f"FACTOR = {factor}\n"})
        import_source(source, ImportOptions(store=store, handler="handler.py"))
    import_source(
        folder(root, "broken", {"handler.py": RAISES_IN_LOAD}),
        ImportOptions(store=store, handler="handler.py:Broken"),
    )
    env = {
        "DEEPSERVE_READY_WITH_FAILED_MODELS": "true",
        "DEEPSERVE_MODELS": json.dumps({"scaler": {"max_queue_delay_ms": 20}}),
    }
    running = start_server(store, root / "server.log", **env)
    yield running
    stop_server(running)


def test_the_example_imports_with_the_signature_it_declares(server: Server) -> None:
    spec = json.loads((server.store / "scaler" / "1" / "model.json").read_text())
    assert spec["handler"] == {"kind": "python", "file": "handler.py", "class_name": "Scaler"}
    assert spec["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert spec["max_batch_size"] == 16 and spec["task"] == "raw" and spec["variants"] == []
    assert (server.store / "scaler" / "1" / "weights.npz").is_file(), "the folder is copied whole"


def test_the_example_answers_over_http_grpc_and_torchserve_style_calls(server: Server) -> None:
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    expected = x * SCALE + SHIFT
    http = httpclient.InferenceServerClient(server.http)
    inp = httpclient.InferInput("x", [3, 4], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_allclose(http.infer("scaler", [inp]).as_numpy("y"), expected, rtol=1e-6)
    grpc = grpcclient.InferenceServerClient(server.grpc)
    ginp = grpcclient.InferInput("x", [3, 4], "FP32")
    ginp.set_data_from_numpy(x)
    np.testing.assert_allclose(grpc.infer("scaler", [ginp]).as_numpy("y"), expected, rtol=1e-6)
    answer = httpx.post(f"{server.base_url}/predictions/scaler", json={"x": x.tolist()}, timeout=30)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(np.array(answer.json()["y"]), expected, rtol=1e-6)


def test_a_bad_request_is_that_request_s_400(server: Server) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    answer = httpx.post(f"{server.base_url}/v2/models/scaler/infer", json=body, timeout=30)
    assert answer.status_code == 400
    assert "'x' expects FP32 with shape [-1, 4]" in answer.text


def test_concurrent_requests_are_batched_and_counted(server: Server) -> None:
    rows = np.arange(16 * 4, dtype=np.float32).reshape(16, 1, 4)

    def one(i: int) -> np.ndarray:
        body = {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": rows[i].ravel().tolist()}]
        }
        answer = httpx.post(f"{server.base_url}/v2/models/scaler/infer", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        return np.array(answer.json()["outputs"][0]["data"], dtype=np.float32)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    for i, y in enumerate(results):  # every request got its own rows back
        np.testing.assert_allclose(y, (rows[i] * SCALE + SHIFT).ravel(), rtol=1e-6)
    [stats] = httpx.get(f"{server.base_url}/v2/models/scaler/stats", timeout=10).json()["model_stats"]
    sizes = [b["batch_size"] for b in stats["batch_stats"]]
    assert max(sizes) > 1, f"16 concurrent requests ran one at a time: {stats['batch_stats']}"
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    assert sample(metrics, "deepserve_requests_total", model="scaler", protocol="v2-http", code="200") >= 16
    assert sample(metrics, "deepserve_batch_size_sum", model="scaler") >= 16


def test_two_models_with_a_helpers_module_each_get_their_own(server: Server) -> None:
    client = httpclient.InferenceServerClient(server.http)
    x = np.ones((1, 2), dtype=np.float32)
    for name, factor in (("twin-a", 2), ("twin-b", -3)):
        inp = httpclient.InferInput("x", [1, 2], "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer(name, [inp]).as_numpy("y"), x * factor)


def test_a_handler_that_raises_in_load_fails_alone_with_its_file_and_line(server: Server) -> None:
    index = {m["name"]: m for m in httpclient.InferenceServerClient(server.http).get_model_repository_index()}
    assert index["broken"]["state"] == "UNAVAILABLE"
    reason = index["broken"]["reason"]
    assert "handler.py:10 in load: FileNotFoundError: weights.bin is not in the model folder" in reason, (
        reason
    )
    assert {index[n]["state"] for n in ("scaler", "twin-a", "twin-b")} == {"READY"}
    answer = httpx.post(f"{server.base_url}/predictions/broken", json={"x": [[1, 2]]}, timeout=10)
    assert answer.status_code == 503 and "weights.bin" in answer.text


@pytest.mark.parametrize(
    ("files", "handler", "says"),
    [
        (
            {"handler.py": "class Nope(\n    pass\n"},
            "handler.py",
            "handler.py:1: SyntaxError: '(' was never closed",
        ),
        (
            {"handler.py": "import numpy\nraise ImportError('needs scipy')\n"},
            "handler.py",
            "handler.py:2 in <module>: ImportError: needs scipy",
        ),
        ({"handler.py": "X = 1\n"}, "handler.py", "exactly one CustomHandler subclass (found: none)"),
        ({"handler.py": "X = 1\n"}, "missing.py:Scaler", "--handler file missing.py is neither in"),
    ],
    ids=["syntax-error", "raises-at-import", "no-class", "no-file"],
)
def test_a_handler_deepserve_cannot_serve_is_refused_in_one_line(
    tmp_path: Path, files: dict[str, str], handler: str, says: str
) -> None:
    source = folder(tmp_path, "bad", files)
    done = cli("import", str(source), "--handler", handler, "--store", str(tmp_path / "store"))
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert says in done.stderr, done.stderr
    assert not (tmp_path / "store" / "bad").exists(), "a refused import leaves no version behind"


def test_a_file_source_is_copied_with_the_handler_beside_it(tmp_path: Path) -> None:
    from deepserve.handlers import load_handler
    from deepserve.handlers.base import TensorRequest

    weights = tmp_path / "data" / "weights.npz"
    weights.parent.mkdir()
    np.savez(weights, scale=SCALE, shift=SHIFT)
    code = folder(tmp_path, "code", {"handler.py": doc_example()}) / "handler.py"
    [version] = import_source(weights, ImportOptions(store=tmp_path / "store", handler=f"{code}:Scaler"))
    assert version == tmp_path / "store" / "weights" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["handler.py", "model.json", "weights.npz"]
    handler = load_handler(version)
    request = TensorRequest({"x": np.ones((2, 4), dtype=np.float32)})
    [out] = handler.predict_batch([handler.preprocess(request)])
    np.testing.assert_allclose(handler.postprocess(out, request)["y"], np.ones((2, 4)) * SCALE + SHIFT)
