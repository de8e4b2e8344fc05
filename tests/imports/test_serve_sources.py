"""`deepserve serve SOURCE ...`: files served in place beside the store, refused when they cannot be.

The ONNX files are written with onnx.helper (no torch), so the test also stands for a serving-only
install: what the user brings needs nothing but the file.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper

from tests.e2e.conftest import REPO, start_server, stop_server

pytestmark = pytest.mark.e2e


def linear_onnx(path: Path, weight: np.ndarray) -> Path:
    """logits = x @ weight, batch axis dynamic."""
    features, classes = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(weight.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "deepserve.cli", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def source_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("deepserve-sources-*"))


def test_a_file_is_served_beside_the_store_and_its_temporary_store_goes_at_exit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    store = tmp_path / "store"
    done = cli("import", str(linear_onnx(tmp_path / "alpha.onnx", rng.normal(size=(4, 2)))),
               "--name", "alpha", "--store", str(store))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (store / "alpha" / "1" / "model.json").is_file()
    assert not (store / "alpha" / "1" / "model.onnx").is_symlink(), "an import copies: the store stands alone"

    beta = linear_onnx(tmp_path / "beta.onnx", rng.normal(size=(4, 3)))
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    before = source_dirs()
    server = start_server(store, tmp_path / "server.log",
                          args=(str(beta), "--task", "classification", "--labels", str(labels)))  # fmt: skip
    try:
        client = httpclient.InferenceServerClient(server.http)
        index = {m["name"]: m["state"] for m in client.get_model_repository_index()}
        assert index == {"alpha": "READY", "beta": "READY"}
        x = rng.normal(size=(5, 4)).astype(np.float32)
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("beta", [inp])
        [expected] = ort.InferenceSession(str(beta)).run(None, {"x": x})
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)
        probs = np.exp(expected - expected.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        np.testing.assert_allclose(result.as_numpy("probabilities"), probs, rtol=1e-5, atol=1e-6)
        one = client.infer("beta", [inp]).get_response()
        assert one["model_name"] == "beta"
        new = source_dirs() - before
        assert len(new) == 1, "one temporary store for the sources"
    finally:
        assert stop_server(server) == 0
    assert not (source_dirs() & new), "the temporary store is removed at exit"
    assert beta.is_file(), "serving in place leaves the source alone"


def test_a_source_named_like_a_store_model_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    alpha = linear_onnx(tmp_path / "alpha.onnx", np.eye(4, 2))
    assert cli("import", str(alpha), "--store", str(store)).returncode == 0
    done = cli("serve", str(alpha), "--store", str(store), "--http-port", "0", "--grpc-port", "0")
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()[-1:]
    assert "'alpha' is already in the store" in line and "--name" in line


def test_a_file_that_is_not_a_model_is_refused_in_one_line(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    done = cli("serve", str(notes), "--store", str(tmp_path / "store"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "notes.txt is not a model file" in done.stderr
