"""`deepserve_build_info` on a real server's /metrics: one sample, value 1, labelled with what the
process runs, each label checked against the package's own idea of its version (not the metadata
lookup metrics.py uses), and the revision the image build stamps."""

from __future__ import annotations

import platform
from pathlib import Path

import httpx
import onnxruntime
import pytest
from prometheus_client.parser import text_string_to_metric_families

import deepserve
from tests.e2e.conftest import start_server, stop_server
from tests.imports.graphs import affine_onnx

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.e2e
def test_build_info_names_the_versions_the_server_runs(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    # a server is ready once it serves a model: the smallest, one ONNX file served in place
    model = affine_onnx(tmp_path / "affine.onnx", "batch")
    server = start_server(store, tmp_path / "server.log", args=(str(model),), DEEPSERVE_REVISION=REVISION)
    try:
        text = httpx.get(f"{server.base_url}/metrics", timeout=10).raise_for_status().text
    finally:
        assert stop_server(server) == 0
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "deepserve_build_info"]
    assert family.type == "gauge"
    [sample] = family.samples
    assert sample.value == 1
    expected = {
        "version": deepserve.__version__,
        "revision": REVISION,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        # ONNX Runtime's own word on its build: "GPU" for onnxruntime-gpu
        "onnxruntime_build": onnxruntime.get_device().lower(),
        "torch": _torch_version(),
    }
    assert sample.labels == expected


def _torch_version() -> str:
    try:
        import torch
    except ImportError:  # the serving-only install: the label is there, empty
        return ""
    return str(torch.__version__)
