"""TorchServe archives (.mar) imported and served with their handler unchanged.

Each answer is checked against TorchServe's own worker code running the same archive
(``archives.torchserve_answers``: ``TsModelLoader.load`` + ``Service.predict``), so "the same
answer TorchServe would give" is measured, not assumed. One server for the module holds:

- ``tagged``: a BaseHandler subclass of the user's (TorchScript model, index_to_name.json,
  model-config.yaml with batchSize / maxBatchDelay) that reads request headers and answers a
  body that is no image with a 400 of its own;
- ``shout``: a ``shout.py:handle`` function entry point that raises PredictionException(422)
  for one word;
- ``builtin-image``: TorchServe's built-in ``image_classifier``, where torchvision and captum
  (what that handler imports) are installed.
"""

from __future__ import annotations

import base64
import concurrent.futures
import importlib.util
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from deepserve.handlers.base import Handler
from deepserve.imports import ImportOptions, SourceError, import_source
from tests.e2e.conftest import REPO, Server, start_server, stop_server
from tests.imports.archives import (
    BROKEN,
    LABELS,
    TAGGED_CLASSIFIER,
    Call,
    build_mar,
    png,
    tiny_classifier,
    torchserve_answers,
    zip_mar,
)

pytestmark = [
    pytest.mark.e2e,
    # ts/version.py (imported by the hosted handlers loaded in this process) leaves its file open
    pytest.mark.filterwarnings(r"ignore:unclosed file .*version\.txt:ResourceWarning"),
]

SHOUT = """\
from ts.utils.util import PredictionException


def handle(data, context):
    if data is None:  # TorchServe calls the entry point once with no data at load
        return None
    answers = []
    for row in data:
        text = row.get("data") or row.get("body")
        text = text.decode() if isinstance(text, (bytes, bytearray)) else str(text)
        if text == "boom":
            raise PredictionException("boom is not a word", 422)
        params = {k: v.decode() for k, v in row.items() if k not in ("data", "body")}
        answers.append({"shout": text.upper(), "params": params, "model": context.model_name})
    return answers
"""
BUILTIN_DEPS = ("torchvision", "captum")


def builtin_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in BUILTIN_DEPS)


@dataclass
class Archives:
    tagged: Path
    shout: Path
    builtin: Path | None


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Archives:
    root = tmp_path_factory.mktemp("mar-sources")
    (root / "tagged.py").write_text(TAGGED_CLASSIFIER)
    (root / "shout.py").write_text(SHOUT)
    (root / "index_to_name.json").write_text(json.dumps(LABELS))
    (root / "model-config.yaml").write_text("batchSize: 8\nmaxBatchDelay: 50\n")
    model = tiny_classifier(root / "model.pt")
    out = root / "mars"
    out.mkdir()
    tagged = build_mar(out, "tagged", str(root / "tagged.py"), serialized=model,
                       extra=[root / "index_to_name.json"], config=root / "model-config.yaml")  # fmt: skip
    shout = build_mar(out, "shout", f"{root / 'shout'}:handle")  # the archiver's spelling of shout.py:handle
    builtin = None
    if builtin_available():
        builtin = build_mar(out, "builtin-image", "image_classifier", serialized=model,
                            extra=[root / "index_to_name.json"])  # fmt: skip
    return Archives(tagged, shout, builtin)


@pytest.fixture(scope="module")
def server(archives: Archives, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("mar-store")
    store = root / "store"
    for mar in (archives.tagged, archives.shout, archives.builtin):
        if mar is not None:
            import_source(mar, ImportOptions(store=store))
    running = start_server(store, root / "server.log")
    yield running
    stop_server(running)


def post(
    server: Server, model: str, body: bytes, headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:  # fmt: skip
    url = f"{server.base_url}/predictions/{model}"
    return httpx.post(url, content=body, headers=headers, params=params, timeout=60)


def assert_same_answer(ours: object, theirs: object) -> None:
    """Equal JSON, floats within the fp32 parity threshold (rel 1e-4)."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and ours.keys() == theirs.keys(), (ours, theirs)
        for key in theirs:
            assert_same_answer(ours[key], theirs[key])
    elif isinstance(theirs, float):
        assert ours == pytest.approx(theirs, rel=1e-4), (ours, theirs)
    else:
        assert ours == theirs


def test_the_archive_becomes_a_version_holding_it_unpacked(server: Server) -> None:
    version = server.store / "tagged" / "1"
    spec = json.loads((version / "model.json").read_text())
    assert spec["handler"] == {"kind": "torchserve", "file": "tagged.py", "class_name": None}
    assert spec["max_batch_size"] == 8 and spec["batching"]["max_queue_delay_ms"] == 50.0
    assert spec["labels"] == list(LABELS.values())
    assert spec["inputs"] == [{"name": "data", "datatype": "BYTES", "shape": [-1]}]
    for name in ("MAR-INF/MANIFEST.json", "model.pt", "tagged.py", "index_to_name.json", "model-config.yaml"):
        assert (version / name).is_file(), name


def test_a_custom_handler_answers_what_torchserve_answers_headers_included(
    server: Server, archives: Archives, tmp_path: Path
) -> None:
    calls = [
        Call(png(1), "image/png", {"X-Top-K": "2", "X-Request-Tag": "first"}),
        Call(b"not an image"),
        Call(png(2), "image/jpeg", {"X-Request-Tag": "third"}),
    ]
    expected = torchserve_answers(archives.tagged, tmp_path / "ts", calls)
    assert [status for status, _ in expected] == [200, 400, 200]

    def send(call: Call) -> httpx.Response:
        return post(server, "tagged", call.body, headers={"Content-Type": call.content_type, **call.headers})

    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:  # concurrent: one batch, likely
        ours = list(pool.map(send, calls))
    for answer, (status, body) in zip(ours, expected, strict=True):
        assert answer.status_code == status, answer.text
        if status == 200:
            assert_same_answer(answer.json(), body)
    assert "not an image (UnidentifiedImageError)" in ours[1].json()["message"]
    assert ours[0].json()["tag"] == "first" and len(ours[0].json()["labels"]) == 2


def test_a_function_entry_point_gets_query_parameters_and_its_own_error_codes(
    server: Server, archives: Archives, tmp_path: Path
) -> None:
    calls = [Call("hello", "text/plain", query={"lang": "en"}), Call("boom", "text/plain")]
    [(status, expected)] = torchserve_answers(archives.shout, tmp_path / "ts", calls[:1])
    answer = post(server, "shout", b"hello", params={"lang": "en"}, headers={"Content-Type": "text/plain"})
    assert answer.status_code == status == 200
    assert answer.json() == expected == {"shout": "HELLO", "params": {"lang": "en"}, "model": "shout"}
    [(code, _)] = torchserve_answers(archives.shout, tmp_path / "ts2", calls[1:])
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # the poison request fails alone
        answers = list(pool.map(lambda w: post(server, "shout", w.encode()), ["a", "boom", "b", "c"]))
    assert [a.status_code for a in answers] == [200, code, 200, 200] == [200, 422, 200, 200]
    assert "boom is not a word" in answers[1].json()["message"]


def test_a_url_encoded_form_reaches_the_handler_as_torchserve_s_fields(server: Server) -> None:
    answer = httpx.post(
        f"{server.base_url}/predictions/shout", data={"data": "hi there", "lang": "en"}, timeout=30
    )
    assert answer.status_code == 200, answer.text  # curl -d data=...: each field under its name, as bytes
    assert answer.json() == {"shout": "HI THERE", "params": {"lang": "en"}, "model": "shout"}


def test_kserve_v2_clients_send_bodies_and_get_answers(server: Server) -> None:
    images = [png(3), png(4)]
    reference = [post(server, "tagged", image).json() for image in images]
    data = np.array(images, dtype=np.object_)
    http = httpclient.InferenceServerClient(server.http)
    inp = httpclient.InferInput("data", [2], "BYTES")
    inp.set_data_from_numpy(data)
    for value, expected in zip(http.infer("tagged", [inp]).as_numpy("output"), reference, strict=True):
        assert_same_answer(json.loads(value), expected)
    grpc = grpcclient.InferenceServerClient(server.grpc)
    ginp = grpcclient.InferInput("data", [2], "BYTES")
    ginp.set_data_from_numpy(data)
    for value, expected in zip(grpc.infer("tagged", [ginp]).as_numpy("output"), reference, strict=True):
        assert_same_answer(json.loads(value), expected)
    meta = http.get_model_metadata("tagged")
    assert [(t["name"], t["datatype"]) for t in meta["inputs"] + meta["outputs"]] == [
        ("data", "BYTES"),
        ("output", "BYTES"),
    ]


def test_json_bodies_over_v2_are_decoded_as_torchserve_decodes_them(server: Server) -> None:
    body = {"inputs": [{"name": "data", "datatype": "BYTES", "shape": [1], "data": ["quiet"]}],
            "parameters": {"content_type": "text/plain"}}  # fmt: skip
    answer = httpx.post(f"{server.base_url}/v2/models/shout/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert json.loads(answer.json()["outputs"][0]["data"][0])["shout"] == "QUIET"


def test_concurrent_requests_share_batches_and_are_counted(server: Server) -> None:
    images = [png(10 + i) for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda b: post(server, "tagged", b), images))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    [stats] = httpx.get(f"{server.base_url}/v2/models/tagged/stats", timeout=10).json()["model_stats"]
    sizes = [b["batch_size"] for b in stats["batch_stats"]]
    assert max(sizes) > 1 and max(sizes) <= 8, stats["batch_stats"]  # batchSize 8 from model-config.yaml
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    counted = {(s.labels.get("protocol"), s.labels.get("code")): s.value
               for f in text_string_to_metric_families(metrics) for s in f.samples
               if s.name == "deepserve_requests_total" and s.labels.get("model") == "tagged"}  # fmt: skip
    assert counted[("torchserve", "200")] >= 16


@pytest.mark.skipif(
    not builtin_available(), reason=f"TorchServe's image_classifier needs {' and '.join(BUILTIN_DEPS)}"
)
def test_the_built_in_image_classifier_answers_what_torchserve_answers(
    server: Server, archives: Archives, tmp_path: Path
) -> None:
    assert archives.builtin is not None
    calls = [Call(png(5, (300, 280)), "image/png"), Call(png(6, (256, 256)), "image/png")]
    expected = torchserve_answers(archives.builtin, tmp_path / "ts", calls)
    for call, (status, body) in zip(calls, expected, strict=True):
        answer = post(server, "builtin-image", call.body, headers={"Content-Type": call.content_type})
        assert answer.status_code == status == 200, answer.text
        assert_same_answer(answer.json(), body)
    encoded = base64.b64encode(calls[0].body).decode()  # the handler also takes base64 text
    assert_same_answer(
        post(server, "builtin-image", encoded.encode(), headers={"Content-Type": "text/plain"}).json(),
        expected[0][1],
    )


# -- archives deepserve cannot serve -------------------------------------------------------------------
def cli_import(source: Path, store: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "deepserve.cli", "import", str(source), "--store", str(store)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


MANIFEST = {
    "runtime": "python",
    "model": {"modelName": "bad", "handler": "handler.py", "modelVersion": "1.0"},
}


def bad_archive(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "bad.mar"
    if kind == "no-handler":
        return zip_mar(path, {"runtime": "python", "model": {"modelName": "bad", "modelVersion": "1.0"}}, {})
    if kind == "syntax-error":
        (tmp_path / "broken.py").write_text(BROKEN)
        return build_mar(tmp_path, "bad", str(tmp_path / "broken.py"))
    if kind == "missing-handler-file":
        return zip_mar(path, MANIFEST, {})
    if kind == "traversal":
        return zip_mar(
            path, MANIFEST, {"handler.py": b"def handle(d, c):\n    return d\n", "../evil.py": b""}
        )
    if kind == "not-a-zip":
        path.write_bytes(b"PK? no")
        return path
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        (
            "no-handler",
            "has no handler in MAR-INF/MANIFEST.json; rebuild it with torch-model-archiver --handler",
        ),
        ("syntax-error", "broken.py:2: SyntaxError: expected ':'"),
        (
            "missing-handler-file",
            "handler 'handler.py' is neither a file of the archive (handler.py is missing)",
        ),
        ("traversal", "holds '../evil.py', which would land outside the model directory"),
        ("not-a-zip", "is not a zip archive"),
    ],
)
def test_an_archive_deepserve_cannot_serve_is_refused_in_one_line(
    tmp_path: Path, kind: str, says: str
) -> None:
    store = tmp_path / "store"
    done = cli_import(bad_archive(tmp_path, kind), store)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert says in done.stderr, done.stderr
    assert not store.exists() or not any(store.iterdir()), "a refused import leaves no version behind"


def test_an_archive_of_deepserve_export_is_imported_as_the_model_it_carries(tmp_path: Path) -> None:
    from tests.imports.test_serve_sources import linear_onnx

    [version] = import_source(
        linear_onnx(tmp_path / "lin.onnx", np.eye(3)), ImportOptions(store=tmp_path / "a")
    )
    manifest = {
        "runtime": "python",
        "model": {"modelName": "lin", "handler": "torchserve.py", "serializedFile": "model.onnx"},
    }
    files = {p.name: p.read_bytes() for p in version.iterdir() if p.is_file()}
    files["torchserve.py"] = (REPO / "deepserve" / "handlers" / "torchserve.py").read_bytes()
    [imported] = import_source(
        zip_mar(tmp_path / "lin.mar", manifest, files), ImportOptions(store=tmp_path / "b")
    )
    spec = json.loads((imported / "model.json").read_text())
    assert "handler" not in spec and spec["name"] == "lin" and spec["variants"][0]["file"] == "model.onnx"


def test_a_missing_torchserve_package_is_that_model_s_load_error(
    tmp_path: Path, archives: Archives, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepserve.handlers import load_handler
    from deepserve.handlers.base import ModelLoadError

    [version] = import_source(archives.shout, ImportOptions(store=tmp_path / "store"))
    monkeypatch.setitem(sys.modules, "ts.service", None)  # as if TorchServe were not installed
    with pytest.raises(ModelLoadError, match=r"pip install 'deepserve\[torchserve\]'"):
        load_handler(version)


def test_an_import_refuses_tasks_a_torchserve_handler_cannot_have(tmp_path: Path, archives: Archives) -> None:
    with pytest.raises(SourceError, match="--task embedding is not available for a TorchServe archive"):
        import_source(archives.shout, ImportOptions(store=tmp_path / "store", task="embedding"))
    assert not (tmp_path / "store" / "shout").exists()
    with zipfile.ZipFile(archives.shout) as zf:
        assert "MAR-INF/MANIFEST.json" in zf.namelist()


@pytest.mark.skipif(builtin_available(), reason="torchvision and captum are installed: the built-in loads")
def test_a_built_in_handler_whose_packages_are_missing_fails_to_load_saying_which(tmp_path: Path) -> None:
    from deepserve.handlers import load_handler
    from deepserve.handlers.base import ModelLoadError

    model = tiny_classifier(tmp_path / "model.pt")
    mar = build_mar(tmp_path, "builtin-image", "image_classifier", serialized=model)
    [version] = import_source(mar, ImportOptions(store=tmp_path / "store"))
    with pytest.raises(
        ModelLoadError,
        match=r"import of handler image_classifier: ModuleNotFoundError: .*'(torchvision|captum)",
    ):
        load_handler(version)


def hosted(tmp_path: Path, name: str, code: str) -> Handler:
    """An in-process hosted handler of a `handler.py:handle` archive named ``name``."""
    from deepserve.handlers import load_handler

    manifest = {"runtime": "python", "model": {"modelName": name, "handler": "handler:handle"}}
    mar = zip_mar(tmp_path / f"{name}.mar", manifest, {"handler.py": code.encode()})
    [version] = import_source(mar, ImportOptions(store=tmp_path / "store"))
    return load_handler(version)


def test_two_archives_with_a_handler_py_each_run_their_own(tmp_path: Path) -> None:
    from deepserve.handlers.base import PayloadRequest

    answers = {}
    for name in ("alpha", "beta"):
        code = f"def handle(data, context):\n    return None if data is None else [{name!r}] * len(data)\n"
        answers[name] = hosted(tmp_path, name, code)
    for name, handler in answers.items():
        request = PayloadRequest(b"x", None, {}, {})
        [out] = handler.predict_batch([handler.preprocess(request)])
        assert handler.postprocess(out, request) == name


def test_a_failed_batch_fails_as_torchserve_fails_it(tmp_path: Path) -> None:
    from deepserve.handlers.base import PayloadRequest
    from deepserve.handlers.hosted_torchserve import TorchServeError

    handler = hosted(tmp_path, "shout", SHOUT)
    items = [handler.preprocess(PayloadRequest(w, "text/plain", {}, {})) for w in ("a", "boom")]
    with pytest.raises(TorchServeError, match="boom is not a word") as failed:
        handler.predict_batch(items)
    assert failed.value.status == 422
    short = hosted(
        tmp_path, "short", "def handle(data, context):\n    return None if data is None else ['one']\n"
    )
    items = [short.preprocess(PayloadRequest(b"x", None, {}, {})) for _ in range(2)]
    with pytest.raises(TorchServeError, match="2 requests, 1 answers") as mismatch:
        short.predict_batch(items)
    assert mismatch.value.status == 503
