"""Model stores and sources in object storage (deepserve.remote_store), against real servers on loopback.

S3 is moto's server (``python -m moto.server``, started here) with its IAM checks on, so wrong
credentials and a denied prefix are refused as AWS refuses them; its request log tells how often
each object was downloaded. HTTP is ``http.server`` with a handler that can cut a file short
mid-transfer. GCS (gs://) goes through the same code with gcsfs; there is no GCS server to test
against here. Needs the `remote` extra and moto[server] + boto3 (the `dev` extra's).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest

from deepserve.imports import ImportOptions, import_source
from deepserve.remote_store import RemoteStore, RemoteStoreError, cache_dir, store_uri
from tests.e2e.conftest import REPO, free_port, start_server, stop_server
from tests.imports.graphs import affine_onnx, ort_run

BUCKET = "models"
X = np.arange(8, dtype=np.float32).reshape(2, 4) / 8


# -- servers -----------------------------------------------------------------------------------------------
@dataclass
class S3Server:
    endpoint: str
    key_id: str
    secret: str
    log: Path

    def env(self, **more: str) -> dict[str, str]:
        """What a deepserve process needs: the standard AWS variables, nothing of ours."""
        return {"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint, **more}  # fmt: skip

    def client(self) -> Any:
        return boto3.client("s3", aws_access_key_id=self.key_id, aws_secret_access_key=self.secret,
                            region_name="us-east-1", endpoint_url=self.endpoint)  # fmt: skip

    def downloads(self, key: str) -> int:
        """GET requests moto answered for the object ``key`` (its log has a line per request)."""
        return len(re.findall(rf'"GET /{BUCKET}/{re.escape(key)} HTTP', self.log.read_text()))


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 on a free loopback port, checking credentials and IAM policies after the first
    three requests: the ones that make its user, key and policy (GetObject denied under denied/)."""
    port, log = free_port(), tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=sink, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_for(port, process)
        anyone = {"aws_access_key_id": "x", "aws_secret_access_key": "x", "region_name": "us-east-1"}
        iam = boto3.client("iam", endpoint_url=endpoint, **anyone)
        iam.create_user(UserName="deepserve")
        key = iam.create_access_key(UserName="deepserve")["AccessKey"]
        iam.put_user_policy(UserName="deepserve", PolicyName="store", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*/denied/*"},
            ],
        }))  # fmt: skip
        server = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], log)
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_for(port: int, process: subprocess.Popen[bytes]) -> None:
    """Until moto listens: a TCP connect, as an HTTP request would use one of the three."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "moto's server exited at start"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto's server did not listen on port {port}")


class _CuttingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder (index pages included); the paths in ``cut`` stop after half their bytes,
    with the whole length announced: a download cut short, as a dropped connection leaves it."""

    cut: frozenset[str] = frozenset()

    def copyfile(self, source: Any, outputfile: Any) -> None:
        if self.path in self.cut:
            data = source.read()
            outputfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().copyfile(source, outputfile)

    def log_message(self, format: str, *args: Any) -> None:  # the test's output stays readable
        pass


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[str, Path, set[str]]]:
    """(base URL, the folder it serves, the set of paths to cut short)."""
    folder, cut = tmp_path / "www", set[str]()
    folder.mkdir()
    handler = type("Handler", (_CuttingHandler,), {"cut": cut})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder, cut
    finally:
        server.shutdown()
        server.server_close()


# -- stores ------------------------------------------------------------------------------------------------
def build_store(root: Path, names: list[str], work: Path) -> Path:
    """One affine ONNX model per name, imported as a user would, each version with its SHA256SUMS."""
    graph = affine_onnx(work / "affine.onnx", "batch")
    for name in names:
        [version_dir] = import_source(graph, ImportOptions(store=root, name=name))
        files = sorted(p for p in version_dir.iterdir() if p.is_file())
        sums = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in files)
        (version_dir / "SHA256SUMS").write_text(sums)
    return root


def upload(s3: S3Server, root: Path, prefix: str) -> None:
    client = s3.client()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.relative_to(root).as_posix()}",
                          Body=path.read_bytes())  # fmt: skip


def infer(base_url: str, model: str) -> httpx.Response:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(X.shape), "data": X.ravel().tolist()}]}
    return httpx.post(f"{base_url}/v2/models/{model}/infer", json=body, timeout=10)


def assert_serves(base_url: str, model: str, graph: Path) -> None:
    answer = infer(base_url, model)
    assert answer.status_code == 200, answer.text
    [out] = answer.json()["outputs"]
    np.testing.assert_allclose(np.array(out["data"]).reshape(out["shape"]), ort_run(graph, {"x": X})["y"],
                               rtol=1e-6)  # fmt: skip


def index(base_url: str) -> dict[str, dict[str, str]]:
    rows = httpx.post(f"{base_url}/v2/repository/index", json={}, timeout=10).json()
    return {row["name"]: row for row in rows}


def uri_path(uri: str) -> Path:
    """What ``start_server`` passes as --store: argparse's ``type=Path`` folds "s3://" to "s3:/"."""
    return Path(uri)


# -- tests -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "uri"),
    [("s3://bucket/store", "s3://bucket/store"), (Path("s3://bucket/store"), "s3://bucket/store"),
     (Path("file:///srv/store"), "file:///srv/store"), ("https://host:8443/m/", "https://host:8443/m/"),
     ("model_store", None), ("/srv/store", None), ("c:/store", None)],
)  # fmt: skip
def test_store_uri_reads_uris_and_the_paths_argparse_makes_of_them(
    value: str | Path, uri: str | None
) -> None:
    assert store_uri(value) == uri


def test_store_uri_refuses_a_scheme_it_cannot_fetch() -> None:
    with pytest.raises(RemoteStoreError, match=r"unsupported URI scheme ftp:// \(use one of s3, gs"):
        store_uri("ftp://host/store")


def test_a_file_uri_store_is_copied_once_and_again_when_an_object_changes(tmp_path: Path) -> None:
    source = build_store(tmp_path / "store", ["alpha"], tmp_path)
    remote = RemoteStore(f"file://{source}", tmp_path / "cache" / "copy")
    assert remote.refresh() == {"alpha": [1]}
    copy = remote.fetch("alpha", 1)
    graph = copy / "model.onnx"
    inode = graph.stat().st_ino
    assert remote.fetch("alpha", 1) == copy and graph.stat().st_ino == inode, "a current copy is reused"

    (source / "alpha" / "1" / "labels.txt").write_text("a\nb\nc\n")  # a new object: the listing differs
    remote.refresh()
    assert (remote.fetch("alpha", 1) / "labels.txt").read_text() == "a\nb\nc\n"
    assert sorted(p.name for p in (tmp_path / "cache" / "copy" / "alpha").iterdir()) == ["1"], "no leftovers"


@pytest.mark.e2e
def test_a_store_in_s3_is_served_and_the_second_start_uses_the_copy(s3: S3Server, tmp_path: Path) -> None:
    upload(s3, build_store(tmp_path / "store", ["alpha", "beta"], tmp_path), "ok")
    env = s3.env(DEEPSERVE_STORE_CACHE=str(tmp_path / "cache"))
    graph = tmp_path / "store" / "alpha" / "1" / "model.onnx"
    server = start_server(uri_path(f"s3://{BUCKET}/ok"), tmp_path / "first.log", **env)
    try:
        assert_serves(server.base_url, "alpha", graph)
        assert_serves(server.base_url, "beta", graph)
    finally:
        assert stop_server(server) == 0
    assert s3.downloads("ok/alpha/1/model.onnx") == s3.downloads("ok/beta/1/model.onnx") == 1
    copy = cache_dir(f"s3://{BUCKET}/ok", tmp_path / "cache") / "alpha" / "1" / "model.onnx"
    inode = copy.stat().st_ino

    server = start_server(uri_path(f"s3://{BUCKET}/ok"), tmp_path / "second.log", **env)
    try:
        assert_serves(server.base_url, "alpha", graph)
    finally:
        assert stop_server(server) == 0
    assert s3.downloads("ok/alpha/1/model.onnx") == 1, "the second start downloaded again"
    assert s3.downloads("ok/alpha/1/model.json") == 1
    assert copy.stat().st_ino == inode


@pytest.mark.e2e
def test_a_corrupt_or_forbidden_version_fails_alone(s3: S3Server, tmp_path: Path) -> None:
    """``broken``'s graph is uploaded short while its SHA256SUMS stays; GetObject is denied under
    ``denied/``: each is failed with its one-line reason, nothing of it is cached, alpha serves."""
    store = build_store(tmp_path / "store", ["alpha", "broken", "denied"], tmp_path)
    graph = store / "broken" / "1" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-20])
    upload(s3, store, "mixed")
    server = start_server(uri_path(f"s3://{BUCKET}/mixed"), tmp_path / "server.log",
                          DEEPSERVE_READY_WITH_FAILED_MODELS="true",
                          **s3.env(DEEPSERVE_STORE_CACHE=str(tmp_path / "cache")))  # fmt: skip
    try:
        assert_serves(server.base_url, "alpha", store / "alpha" / "1" / "model.onnx")
        rows = index(server.base_url)
        assert rows["broken"]["state"] == rows["denied"]["state"] == "UNAVAILABLE"
        broken, denied = rows["broken"]["reason"], rows["denied"]["reason"]
        assert re.fullmatch(
            rf"RemoteStoreError: s3://{BUCKET}/mixed/broken/1/model.onnx: its SHA-256 \w+\.\.\. is not the "
            r"\w+\.\.\. that SHA256SUMS records: the object is truncated or corrupt in the store; "
            r"upload it again",
            broken,
        ), broken
        assert denied.startswith(f"RemoteStoreError: cannot download s3://{BUCKET}/mixed/denied/1/"), denied
        assert "PermissionError: Access Denied" in denied, denied
        assert "SHA256SUMS records" in infer(server.base_url, "broken").text
    finally:
        assert stop_server(server) == 0
    copy = cache_dir(f"s3://{BUCKET}/mixed", tmp_path / "cache")
    assert sorted(p.name for p in copy.iterdir()) == ["alpha"], "a failed version left something behind"
    assert "Traceback" not in (tmp_path / "server.log").read_text()


@pytest.mark.e2e
def test_wrong_credentials_stop_the_server_at_start_with_one_line(s3: S3Server, tmp_path: Path) -> None:
    upload(s3, build_store(tmp_path / "store", ["alpha"], tmp_path), "creds")
    env = {**os.environ, **s3.env(AWS_SECRET_ACCESS_KEY="wrong", DEEPSERVE_STORE_CACHE=str(tmp_path / "c"))}
    cmd = [sys.executable, "-m", "deepserve.service", "--store", f"s3://{BUCKET}/creds",
           "--http-port", str(free_port()), "--grpc-port", "0"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    [line] = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert f"cannot list s3://{BUCKET}/creds: PermissionError: The request signature" in line
    assert line.endswith("; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for "
                         "servers other than AWS)")  # fmt: skip
    assert "Traceback" not in done.stderr


@pytest.mark.e2e
def test_a_download_cut_short_over_https_fails_that_model_alone(
    http_folder: tuple[str, Path, set[str]], tmp_path: Path
) -> None:
    base, folder, cut = http_folder
    store = build_store(folder / "store", ["alpha", "cut"], tmp_path)
    cut.add("/store/cut/1/model.onnx")
    server = start_server(uri_path(f"{base}/store/"), tmp_path / "server.log",
                          DEEPSERVE_READY_WITH_FAILED_MODELS="true",
                          DEEPSERVE_STORE_CACHE=str(tmp_path / "cache"))  # fmt: skip
    try:
        assert_serves(server.base_url, "alpha", store / "alpha" / "1" / "model.onnx")
        reason = index(server.base_url)["cut"]["reason"]
        assert reason.startswith(f"RemoteStoreError: cannot download {base}/store/cut/1/model.onnx: "), reason
        assert "\n" not in reason
    finally:
        assert stop_server(server) == 0
    assert sorted(p.name for p in cache_dir(f"{base}/store/", tmp_path / "cache").iterdir()) == ["alpha"]


@pytest.mark.e2e
def test_a_file_uri_store_is_served(tmp_path: Path) -> None:
    store = build_store(tmp_path / "store", ["alpha"], tmp_path)
    server = start_server(uri_path(f"file://{store}"), tmp_path / "server.log",
                          DEEPSERVE_STORE_CACHE=str(tmp_path / "cache"))  # fmt: skip
    try:
        assert_serves(server.base_url, "alpha", store / "alpha" / "1" / "model.onnx")
    finally:
        assert stop_server(server) == 0
    assert (cache_dir(f"file://{store}", tmp_path / "cache") / "alpha" / "1" / "model.onnx").is_file()


@pytest.mark.e2e
def test_import_and_serve_take_a_model_file_in_s3(s3: S3Server, tmp_path: Path) -> None:
    graph = affine_onnx(tmp_path / "affine.onnx", "batch")
    s3.client().put_object(Bucket=BUCKET, Key="files/affine.onnx", Body=graph.read_bytes())
    env = {**os.environ, **s3.env(DEEPSERVE_STORE_CACHE=str(tmp_path / "cache"))}
    cmd = [sys.executable, "-m", "deepserve.cli", "import", f"s3://{BUCKET}/files/affine.onnx",
           "--store", str(tmp_path / "store"), "--name", "imported"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "store" / "imported" / "1" / "model.onnx").read_bytes() == graph.read_bytes()

    server = start_server(tmp_path / "store", tmp_path / "server.log",
                          args=(f"s3://{BUCKET}/files/affine.onnx",), **env)  # fmt: skip
    try:
        assert_serves(server.base_url, "imported", graph)
        assert_serves(server.base_url, "affine", graph)
    finally:
        assert stop_server(server) == 0
