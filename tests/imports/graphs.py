"""Tiny graph files a user could bring, and the way the import tests drive them.

``classifier_onnx`` goes through ``torch.onnx.export`` (the path most users take, symbolic batch
axis and all); the fixed-shape and deliberately odd graphs are built node by node with
``onnx.helper``, which is instant and says exactly what the file declares. Below them: the
``deepserve import`` command as a user runs it, and the client-side checks both modules share.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_aio
from onnx import TensorProto, helper, numpy_helper

from deepserve.export.onnx_graph import write_onnx
from deepserve.export.parity import THRESHOLDS, compare
from tests.e2e.conftest import REPO

FEATURES, CLASSES = 4, 3
LABELS = ["cat", "dog", "emu"]


def classifier_onnx(path: Path) -> Path:
    """x FP32 [batch, 4] -> logits FP32 [batch, 3], a seeded MLP exported by torch with a dynamic batch."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(FEATURES, 8), torch.nn.ReLU(), torch.nn.Linear(8, CLASSES))
    dims = {"input": {0: torch.export.Dim("batch", max=1024)}}
    example = (torch.randn(2, FEATURES),)
    return write_onnx(mlp, example, path, input_names=["x"], output_names=["logits"], dynamic_shapes=dims)


def onnx_file(
    path: Path,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto] | None = None,
) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what this onnxruntime reads
    onnx.save(model, str(path))
    return path


def affine_onnx(path: Path, batch: int | str, *, name_in: str = "x", name_out: str = "y") -> Path:
    """``name_out = name_in @ W + b`` (W seeded, [4, 3]); ``batch``: a fixed first dim or a symbol."""
    rng = np.random.default_rng(1)
    weight = numpy_helper.from_array(rng.normal(size=(FEATURES, CLASSES)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.normal(size=(CLASSES,)).astype(np.float32), "b")
    return onnx_file(
        path,
        [helper.make_tensor_value_info(name_in, TensorProto.FLOAT, [batch, FEATURES])],
        [helper.make_tensor_value_info(name_out, TensorProto.FLOAT, [batch, CLASSES])],
        [
            helper.make_node("MatMul", [name_in, "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], [name_out]),
        ],
        [weight, bias],
    )


def scalar_onnx(path: Path) -> Path:
    """Rank-0 in and out (``y = 2 * s``): a graph with no batch axis at all."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    return onnx_file(
        path,
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        [helper.make_node("Mul", ["s", "two"], ["y"])],
        [two],
    )


class TwoHeads(torch.nn.Module):
    """(x FP32 [B, 4], ids INT64 [B, 5]) -> {"scores": FP32 [B, 3], "twice": INT64 [B, 5]}."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(FEATURES, CLASSES)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scores": self.linear(x), "twice": ids * 2}


def two_heads_pt2(path: Path) -> tuple[Path, TwoHeads]:
    torch.manual_seed(0)
    module = TwoHeads().eval()
    batch = torch.export.Dim("batch", max=1024)
    example = (torch.randn(2, FEATURES), torch.ones(2, 5, dtype=torch.int64))
    program = torch.export.export(module, example, dynamic_shapes={"x": {0: batch}, "ids": {0: batch}})
    torch.export.save(program, str(path))
    return path, module


def torchscript_pt(path: Path) -> Path:
    """A traced Linear(4, 3): forward(input) -> Tensor."""
    torch.manual_seed(0)
    traced = torch.jit.trace(torch.nn.Linear(FEATURES, CLASSES).eval(), torch.randn(2, FEATURES))
    traced.save(str(path))
    return path


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What ONNX Runtime itself answers for ``feeds`` on the user's file: the reference."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def busy_onnx(path: Path, *, width: int = 512, depth: int = 24) -> Path:
    """x FP32 [batch, 4] -> y FP32 [batch, 3] through ``depth`` tanh(h @ W) steps that share one W.

    About 6 M multiply-adds a row in a 1 MB file: slow enough that requests from 16 concurrent
    clients pile up behind a running batch (a 4-8-3 MLP answers before the next one arrives, so
    there would be nothing to batch), small enough to build instantly.
    """
    rng = np.random.default_rng(2)
    scale = 1.0 / np.sqrt(width)
    weights = {
        "W_in": rng.normal(size=(FEATURES, width)),
        "W": rng.normal(size=(width, width)) * scale,
        "W_out": rng.normal(size=(width, CLASSES)) * scale,
    }
    nodes = [helper.make_node("MatMul", ["x", "W_in"], ["h0"])]
    for i in range(depth):
        nodes += [
            helper.make_node("MatMul", [f"h{i}", "W"], [f"m{i}"]),
            helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]),
        ]
    nodes.append(helper.make_node("MatMul", [f"h{depth}", "W_out"], ["y"]))
    return onnx_file(
        path,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", CLASSES])],
        nodes,
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()],
    )


# -- driving the import command and the server ----------------------------------------------------------
FP32_REL = THRESHOLDS["fp32"]["rel"]


def deepserve_import(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``python -m deepserve.cli import ARGS`` as a user runs it."""
    cmd = [sys.executable, "-m", "deepserve.cli", "import", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def assert_close(served: np.ndarray, reference: np.ndarray) -> None:
    assert served.shape == reference.shape and served.dtype == reference.dtype
    assert compare(reference, served, classifier=False)["rel"] <= FP32_REL


async def concurrent_infer(url: str, model: str, xs: list[np.ndarray], output: str) -> list[np.ndarray]:
    """All of ``xs`` in flight at once, one request each (tritonclient's asyncio HTTP client)."""
    client = triton_aio.InferenceServerClient(url)
    try:
        inputs = [triton_aio.InferInput("x", list(x.shape), "FP32") for x in xs]
        for inp, x in zip(inputs, xs, strict=True):
            inp.set_data_from_numpy(x)
        results = await asyncio.gather(*(client.infer(model, [inp]) for inp in inputs))
        return [r.as_numpy(output) for r in results]
    finally:
        await client.close()


def stats(url: str, model: str) -> dict[str, int]:
    """Rows served and runs executed by ``model``, all its versions together."""
    versions = triton_http.InferenceServerClient(url).get_inference_statistics(model)["model_stats"]
    return {key: sum(int(v[key]) for v in versions) for key in ("inference_count", "execution_count")}
