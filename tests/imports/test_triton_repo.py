"""``deepserve import`` of a Triton model repository, served as is to unmodified tritonclient.

The repository: ``busy`` (ONNX, max_batch_size 16, dynamic_batching with a 20 ms delay and
preferred sizes, two instances, version_policy all: versions 1 and 2), ``labelled`` (backend
onnxruntime, an output with label_filename: a classifier; versions 1 and 3 under the default
policy, so only 3) and ``script`` (pytorch_libtorch, INPUT__0 / OUTPUT__0). Answers are compared
with the file's own runtime; batching must show in ``/v2/models/busy/stats``.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from tests.e2e.conftest import Server, start_server, stop_server
from tests.imports import graphs
from tests.imports.graphs import assert_close, concurrent_infer, deepserve_import, stats

BUSY = """
    name: "busy"
    platform: "onnxruntime_onnx"
    max_batch_size: 16
    input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]
    output [ { name: "y", data_type: TYPE_FP32, dims: [ 3 ] } ]
    dynamic_batching { max_queue_delay_microseconds: 20000, preferred_batch_size: [ 4, 8 ] }
    instance_group [ { count: 2, kind: KIND_CPU } ]
    version_policy: { all { } }
"""
LABELLED = """
    backend: "onnxruntime"
    max_batch_size: 8
    input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]
    output [ { name: "y", data_type: TYPE_FP32, dims: [ 3 ], label_filename: "labels.txt" } ]
"""
SCRIPT = """
    platform: "pytorch_libtorch"
    max_batch_size: 8
    input [ { name: "INPUT__0", data_type: TYPE_FP32, dims: [ 4 ] } ]
    output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 3 ] } ]
"""


def write_model(repo: Path, name: str, config: str, versions: dict[int, Path], filename: str = "") -> Path:
    folder = repo / name
    folder.mkdir(parents=True)
    (folder / "config.pbtxt").write_text(textwrap.dedent(config))
    for version, file in versions.items():
        (folder / str(version)).mkdir()
        shutil.copy(file, folder / str(version) / (filename or f"model{file.suffix}"))
    return folder


@dataclass
class Repo:
    files: Path
    store: Path
    server: Server
    log: str  # the import command's stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    files, store = tmp_path_factory.mktemp("triton-files"), tmp_path_factory.mktemp("triton-store")
    busy, affine = graphs.busy_onnx(files / "busy.onnx"), graphs.affine_onnx(files / "affine.onnx", "batch")
    script = graphs.torchscript_pt(files / "script.pt")
    root = files / "repo"
    write_model(root, "busy", BUSY, {1: busy, 2: busy})
    write_model(root, "labelled", LABELLED, {1: busy, 3: affine})
    (root / "labelled" / "labels.txt").write_text("\n".join(graphs.LABELS) + "\n")
    write_model(root, "script", SCRIPT, {1: script})
    done = deepserve_import(root, "--store", store)
    assert done.returncode == 0, done.stderr
    server = start_server(store, tmp_path_factory.mktemp("triton-log") / "server.log")
    yield Repo(files, store, server, done.stderr)
    assert stop_server(server) == 0


def spec(repo: Repo, name: str, version: int) -> dict[str, object]:
    return dict(json.loads((repo.store / name / str(version) / "model.json").read_text()))


def test_every_model_and_served_version_is_imported(repo: Repo) -> None:
    assert sorted(str(p.relative_to(repo.store)) for p in repo.store.glob("*/*")) == [
        "busy/1",
        "busy/2",
        "labelled/3",
        "script/1",
    ]
    busy = spec(repo, "busy", 2)
    assert busy["max_batch_size"] == 16 and busy["task"] == "raw"
    assert busy["batching"] == {"max_queue_delay_ms": 20.0, "preferred_batch_sizes": [4, 8]}
    assert busy["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert "instance_group" in repo.log  # accepted, and said
    labelled = spec(repo, "labelled", 3)
    assert labelled["task"] == "classification" and labelled["labels"] == graphs.LABELS
    assert "batching" not in labelled or labelled["batching"] is None
    assert spec(repo, "script", 1)["variants"][0]["format"] == "torchscript"  # type: ignore[index]


def test_served_as_is_over_http_and_grpc(repo: Repo) -> None:
    x = np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)
    http = triton_http.InferenceServerClient(repo.server.http)
    grpc = triton_grpc.InferenceServerClient(repo.server.grpc)
    for model, file in (("busy", "busy.onnx"), ("labelled", "affine.onnx")):
        reference = graphs.ort_run(repo.files / file, {"x": x})["y"]
        inp = triton_http.InferInput("x", [3, 4], "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        assert_close(http.infer(model, [inp]).as_numpy("y"), reference)
        ginp = triton_grpc.InferInput("x", [3, 4], "FP32")
        ginp.set_data_from_numpy(x)
        assert_close(grpc.infer(model, [ginp]).as_numpy("y"), reference)
    answer = httpx.post(f"{repo.server.base_url}/predictions/labelled", json=x[0].tolist(), timeout=10).json()
    assert set(answer) == set(graphs.LABELS)
    traced = torch.jit.load(str(repo.files / "script.pt"))
    with torch.inference_mode():
        reference = traced(torch.from_numpy(x)).numpy()
    sinp = triton_grpc.InferInput("INPUT__0", [3, 4], "FP32")
    sinp.set_data_from_numpy(x)
    assert_close(grpc.infer("script", [sinp]).as_numpy("OUTPUT__0"), reference)


async def test_dynamic_batching_from_the_config_is_applied(repo: Repo) -> None:
    xs = list(np.random.default_rng(5).normal(size=(16, 1, 4)).astype(np.float32))
    before = stats(repo.server.http, "busy")
    answers = await concurrent_infer(repo.server.http, "busy", xs, "y")
    for x, answer in zip(xs, answers, strict=True):
        assert_close(answer, graphs.ort_run(repo.files / "busy.onnx", {"x": x})["y"])
    after = stats(repo.server.http, "busy")
    rows = after["inference_count"] - before["inference_count"]
    runs = after["execution_count"] - before["execution_count"]
    assert rows == 16 and runs < rows, (rows, runs)
    metrics = httpx.get(f"{repo.server.base_url}/metrics", timeout=10).text
    assert 'deepserve_batch_size_count{model="busy"}' in metrics


# -- refused: exit 2, one line naming the problem, nothing written ------------------------------------------
GOOD_INPUT = 'input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]'
GOOD_OUTPUT = 'output [ { name: "y", data_type: TYPE_FP32, dims: [ 3 ] } ]'
BAD = {
    "tensorrt": (f'platform: "tensorrt_plan"\nmax_batch_size: 8\n{GOOD_INPUT}', "platform 'tensorrt_plan'"),
    "ensemble": (
        'platform: "ensemble"\nensemble_scheduling { step [ { model_name: "a", model_version: -1 } ] }',
        "ensemble_scheduling is not supported",
    ),
    "sequence": (f'platform: "onnxruntime_onnx"\nsequence_batching {{ }}\n{GOOD_INPUT}', "sequence_batching"),
    "decoupled": (
        f'platform: "onnxruntime_onnx"\nmodel_transaction_policy {{ decoupled: true }}\n{GOOD_INPUT}',
        "model_transaction_policy.decoupled",
    ),
    "python backend": ('backend: "python"', "backend 'python'"),
    "name mismatch": (
        'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [ { name: "input0", data_type: TYPE_FP32, dims: [ 4 ] } ]',
        "input 'input0' is not an input of model.onnx, whose inputs are ['x']",
    ),
    "dims mismatch": (
        'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ 5 ] } ]',
        "is FP32 [-1, 5] in config.pbtxt but FP32 [-1, 4] in model.onnx",
    ),
    "typo": ('platform: "onnxruntime_onnx"\nmax_batch_size: eight', "not a Triton model configuration"),
    "fixed batch": (
        f'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n{GOOD_INPUT}\n{GOOD_OUTPUT}',
        "has no dynamic first dimension",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_configs_exit_2_and_write_nothing(repo: Repo, case: str, tmp_path: Path) -> None:
    config, message = BAD[case]
    graph = repo.files / ("fixed.onnx" if case == "fixed batch" else "affine.onnx")
    if case == "fixed batch":
        graphs.affine_onnx(graph, 1)
    root = tmp_path / "repo"
    write_model(root, "good", BUSY.replace('"busy"', '"good"'), {1: repo.files / "busy.onnx"})
    write_model(root, "bad", config, {1: graph})
    done = deepserve_import(root, "--store", tmp_path / "store")
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if "instance_group" not in line]
    assert len(lines) == 1 and lines[0].startswith("deepserve import: ") and message in lines[0], lines
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())
