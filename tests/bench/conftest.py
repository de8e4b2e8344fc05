"""Fixtures: a stand-in v2 server (HTTP + gRPC) started once, and a tiny ONNX model version."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from deepserve.bench import launcher

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[launcher.Server]:
    http, grpc = launcher.free_port(), launcher.free_port()
    log = tmp_path_factory.mktemp("standin") / "standin.log"
    server = launcher.start(
        [str(HERE / "standin_server.py"), str(http), str(grpc)],
        f"http://127.0.0.1:{http}",
        log,
        timeout=60,
        grpc_target=f"127.0.0.1:{grpc}",
    )
    yield server
    server.stop()


def write_tiny_version(root: Path, name: str = "tiny-mlp") -> Path:
    """A real small store version: model.onnx = features (B, 4) @ W -> logits (B, 3), and model.json."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from deepserve.store import ModelSpec

    vdir = root / name / "1"
    vdir.mkdir(parents=True)
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 3])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, vdir / "model.onnx")
    spec = {
        "name": name,
        "version": 1,
        "task": "classification",
        "architecture": "mlp",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
        "max_batch_size": 32,
        "labels": ["a", "b", "c"],
        "preprocessing": {"kind": "tabular", "features": list("wxyz"), "mean": [0.0] * 4, "std": [1.0] * 4},
        "variants": [{"file": "model.onnx", "format": "onnx", "precision": "fp32", "usable": True}],
        "created": datetime.now(UTC).isoformat(),
        "torch_version": "test",
    }
    ModelSpec.model_validate(spec).write(vdir)
    return vdir


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    write_tiny_version(root)
    return root
