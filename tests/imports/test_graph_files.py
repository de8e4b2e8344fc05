"""``deepserve import`` of graph files (.onnx, .pt2), served to unmodified clients.

One store, one server for the module: an ONNX classifier with labels (dynamic batch), an ONNX
graph with a fixed batch of 1, a rank-0 ONNX graph and a torch.export program with two inputs
and named outputs. Every answer is compared with the file's own runtime (onnxruntime on the
.onnx, the eager module for the .pt2) within the fp32 parity threshold.
"""

from __future__ import annotations

import json
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


@dataclass
class Imported:
    files: Path
    store: Path
    server: Server
    logs: dict[str, str]  # model -> the import command's stderr
    program: graphs.TwoHeads


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Imported]:
    files, store = tmp_path_factory.mktemp("graph-files"), tmp_path_factory.mktemp("graph-store")
    (files / "labels.txt").write_text("\n".join(graphs.LABELS) + "\n")
    graphs.classifier_onnx(files / "clf.onnx")
    graphs.affine_onnx(files / "fixed.onnx", batch=1)
    graphs.scalar_onnx(files / "scalar.onnx")
    graphs.busy_onnx(files / "busy.onnx")
    _, program = graphs.two_heads_pt2(files / "heads.pt2")
    commands = {
        "clf": [files / "clf.onnx", "--labels", files / "labels.txt"],
        "fixed": [files / "fixed.onnx"],
        "scalar": [files / "scalar.onnx"],
        "busy": [files / "busy.onnx"],
        "heads": [files / "heads.pt2"],
    }
    logs = {}
    for name, args in commands.items():
        done = deepserve_import(*args, "--store", store)
        assert done.returncode == 0, done.stderr
        logs[name] = done.stderr
    # a tiny model answers faster than one client process sends: wait up to 20 ms for a batch to form
    log = tmp_path_factory.mktemp("graph-log") / "server.log"
    server = start_server(store, log, DEEPSERVE_MAX_QUEUE_DELAY_MS="20")
    yield Imported(files, store, server, logs, program)
    assert stop_server(server) == 0


def spec(imported: Imported, name: str) -> dict[str, object]:
    return dict(json.loads((imported.store / name / "1" / "model.json").read_text()))


def test_signature_is_read_from_the_file(imported: Imported) -> None:
    clf = spec(imported, "clf")
    assert clf["task"] == "classification" and clf["labels"] == graphs.LABELS
    assert clf["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert clf["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]
    assert clf["max_batch_size"] == 64 and clf["architecture"] == "imported onnx file"
    heads = spec(imported, "heads")
    assert heads["task"] == "raw" and heads["variants"][0]["format"] == "pt2"  # type: ignore[index]
    assert heads["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "ids", "datatype": "INT64", "shape": [-1, 5]},
    ]
    assert [o["name"] for o in heads["outputs"]] == ["scores", "twice"]  # type: ignore[attr-defined]
    fixed = spec(imported, "fixed")
    assert fixed["max_batch_size"] == 0 and fixed["inputs"][0]["shape"] == [1, 4]  # type: ignore[index]
    assert "batching off" in imported.logs["fixed"] and "batching off" not in imported.logs["clf"]
    assert spec(imported, "scalar")["inputs"] == [{"name": "s", "datatype": "FP32", "shape": []}]


def test_classifier_over_http_and_grpc_equals_onnxruntime(imported: Imported) -> None:
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    reference = graphs.ort_run(imported.files / "clf.onnx", {"x": x})["logits"]
    http = triton_http.InferenceServerClient(imported.server.http)
    assert [o["name"] for o in http.get_model_metadata("clf")["outputs"]] == ["logits", "probabilities"]
    inp = triton_http.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = http.infer("clf", [inp])
    assert_close(result.as_numpy("logits"), reference)
    probabilities = np.exp(reference) / np.exp(reference).sum(-1, keepdims=True)
    assert np.allclose(result.as_numpy("probabilities"), probabilities, atol=1e-6)
    grpc = triton_grpc.InferenceServerClient(imported.server.grpc)
    ginp = triton_grpc.InferInput("x", list(x.shape), "FP32")
    ginp.set_data_from_numpy(x)
    out = grpc.infer("clf", [ginp], outputs=[triton_grpc.InferRequestedOutput("logits")])
    assert_close(out.as_numpy("logits"), reference)
    assert out.as_numpy("probabilities") is None  # only what was asked for


def test_classifier_torchserve_json_answers_labels(imported: Imported) -> None:
    row = [0.5, -1.0, 2.0, 0.1]
    reference = graphs.ort_run(imported.files / "clf.onnx", {"x": np.array([row], np.float32)})["logits"][0]
    answer = httpx.post(f"{imported.server.base_url}/predictions/clf", json=row, timeout=10).json()
    assert list(answer) == [graphs.LABELS[i] for i in np.argsort(-reference)]


async def test_concurrent_requests_are_batched(imported: Imported) -> None:
    # the busy graph: a 4-8-3 MLP answers each request before the next arrives, leaving nothing to batch
    xs = list(np.random.default_rng(1).normal(size=(16, 1, 4)).astype(np.float32))
    before = stats(imported.server.http, "busy")
    answers = await concurrent_infer(imported.server.http, "busy", xs, "y")
    for x, answer in zip(xs, answers, strict=True):  # batched with others, each row's answer is its own
        assert_close(answer, graphs.ort_run(imported.files / "busy.onnx", {"x": x})["y"])
    after = stats(imported.server.http, "busy")
    rows = after["inference_count"] - before["inference_count"]
    runs = after["execution_count"] - before["execution_count"]
    assert rows == 16 and runs < rows, (rows, runs)


async def test_fixed_batch_graph_runs_each_request_alone(imported: Imported) -> None:
    client = triton_http.InferenceServerClient(imported.server.http)
    assert int(client.get_model_config("fixed")["max_batch_size"]) in (0, 1)
    xs = list(np.random.default_rng(2).normal(size=(16, 1, 4)).astype(np.float32))
    answers = await concurrent_infer(imported.server.http, "fixed", xs, "y")
    for x, answer in zip(xs, answers, strict=True):
        assert_close(answer, graphs.ort_run(imported.files / "fixed.onnx", {"x": x})["y"])
    assert stats(imported.server.http, "fixed") == {"inference_count": 16, "execution_count": 16}
    two = triton_http.InferInput("x", [2, 4], "FP32")
    two.set_data_from_numpy(np.zeros((2, 4), np.float32))
    with pytest.raises(triton_http.InferenceServerException, match=r"\[1, 4\]"):
        client.infer("fixed", [two])


def test_scalar_graph(imported: Imported) -> None:
    body = {"inputs": [{"name": "s", "datatype": "FP32", "shape": [], "data": [1.5]}]}
    answer = httpx.post(f"{imported.server.base_url}/v2/models/scalar/infer", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["shape"] == [] and answer.json()["outputs"][0]["data"] == [3.0]
    json_answer = httpx.post(f"{imported.server.base_url}/predictions/scalar", json=1.5, timeout=10).json()
    assert json_answer == {"y": 3.0}


def test_pt2_program_over_grpc_equals_the_module(imported: Imported) -> None:
    rng = np.random.default_rng(3)
    x, ids = rng.normal(size=(3, 4)).astype(np.float32), rng.integers(0, 9, size=(3, 5))
    with torch.inference_mode():
        reference = imported.program(torch.from_numpy(x), torch.from_numpy(ids))
    client = triton_grpc.InferenceServerClient(imported.server.grpc)
    inputs = [triton_grpc.InferInput("x", [3, 4], "FP32"), triton_grpc.InferInput("ids", [3, 5], "INT64")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(ids)
    result = client.infer("heads", inputs)
    assert_close(result.as_numpy("scores"), reference["scores"].numpy())
    assert np.array_equal(result.as_numpy("twice"), reference["twice"].numpy())


def test_raw_torchserve_json(imported: Imported) -> None:
    body = {"x": [[0.0, 1.0, 2.0, 3.0]], "ids": [[1, 2, 3, 4, 5]]}
    answer = httpx.post(f"{imported.server.base_url}/predictions/heads", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["twice"] == [[2, 4, 6, 8, 10]] and len(answer.json()["scores"][0]) == 3
    one_row = {"x": [0.0, 1.0, 2.0, 3.0], "ids": [1, 2, 3, 4, 5]}  # a single row without its batch axis
    assert httpx.post(f"{imported.server.base_url}/predictions/heads", json=one_row, timeout=10).json() == (
        answer.json()
    )
    bad = httpx.post(f"{imported.server.base_url}/predictions/heads", json={"x": [[1.0]]}, timeout=10)
    assert bad.status_code == 400 and "ids" in bad.text


def test_metrics_name_the_imported_models(imported: Imported) -> None:
    text = httpx.get(f"{imported.server.base_url}/metrics", timeout=10).text
    for name in ("clf", "fixed", "heads"):
        assert f'deepserve_requests_total{{model="{name}"' in text or f'model="{name}"' in text


# -- what is refused: exit 2, one line, nothing left in the store ----------------------------------------
def _truncated(files: Path) -> Path:
    whole = (files / "clf.onnx").read_bytes()
    (files / "truncated.onnx").write_bytes(whole[: len(whole) // 2])
    return files / "truncated.onnx"


BAD = {
    "not a model": (lambda f: _write(f / "notes.onnx", "just some text\n"), [], "ONNX Runtime cannot load"),
    "truncated onnx": (_truncated, [], "ONNX Runtime cannot load"),
    "text as pt2": (lambda f: _write(f / "notes.pt2", "not a program"), [], "not a torch.export program"),
    "torchscript": (lambda f: graphs.torchscript_pt(f / "script.pt"), [], "records no input shapes"),
    "labels miscount": (lambda f: f / "clf.onnx", ["--labels", "two.txt"], "2 labels for the 3 classes"),
    "task misfit": (lambda f: f / "scalar.onnx", ["--task", "classification"], "--task classification"),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_bad_sources_exit_2_with_one_line(imported: Imported, case: str, tmp_path: Path) -> None:
    make, extra, message = BAD[case]
    (imported.files / "two.txt").write_text("a\nb\n")
    source = make(imported.files)
    args = [a if a != "two.txt" else str(imported.files / a) for a in extra]
    done = deepserve_import(source, "--name", "refused", "--store", tmp_path / "store", *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deepserve import: ") and message in lines[0], lines
    assert not (tmp_path / "store" / "refused").exists()


# -- in process: the codec's refusals, serving in place -----------------------------------------------------
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"x": [[1.0, 2.0], [3.0]], "ids": [[1, 2, 3, 4, 5]]}', "rectangular"),
        (
            b"[[0.0, 1.0, 2.0, 3.0]]",
            "send a JSON object {input name: nested list} with the inputs ['x', 'ids']",
        ),
        (
            b'{"x": [[0.0, 1.0, 2.0, 3.0]], "ids": [[1, 2, 3, 4, 5]], "extra": [1]}',
            "unknown input(s) ['extra']",
        ),
        (b'{"x": [["a", "b", "c", "d"]], "ids": [[1, 2, 3, 4, 5]]}', "expects FP32"),
        (b'{"x": [[0.0, 1.0, 2.0, 3.0]], "ids": [[1.5, 2, 3, 4, 5]]}', "expects INT64"),
    ],
)
def test_tensor_bodies_are_refused_with_the_reason(imported: Imported, body: bytes, message: str) -> None:
    from deepserve.handlers import load_handler
    from deepserve.handlers.base import InvalidInputError, PayloadRequest

    handler = load_handler(imported.store / "heads" / "1", load=False)
    with pytest.raises(InvalidInputError) as refused:
        handler.preprocess(PayloadRequest(body, "application/json"))
    assert message in str(refused.value)


def test_serving_in_place_links_the_file(imported: Imported, tmp_path: Path) -> None:
    from deepserve.imports import ImportOptions, import_source

    [version] = import_source(imported.files / "clf.onnx", ImportOptions(store=tmp_path, link=True))
    assert (version / "model.onnx").is_symlink()
    assert (version / "model.onnx").resolve() == (imported.files / "clf.onnx").resolve()
