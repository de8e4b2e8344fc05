"""The quick sweep against the real `deepserve serve`, started by the bench itself on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepserve.bench.__main__ import main

pytestmark = pytest.mark.e2e


def test_quick_sweep_against_deepserve_serve(tiny_store: Path, tmp_path: Path) -> None:
    argv = [
        "tiny-mlp",
        "--store",
        str(tiny_store),
        "--protocol",
        "both",
        "--format",
        "both",
        "--concurrency",
        "1,4",
        "--quick",
        "--warmup",
        "0.3",
        "--duration",
        "1.0",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["server"]["ready_s"] > 0
    assert doc["ceiling"]["items_per_s"] > 0
    targets = {r["target"] for r in doc["results"]}
    assert targets == {"deepserve http/json", "deepserve http/binary", "deepserve grpc"}
    for r in doc["results"]:
        assert r["errors"] == {}, r["error_samples"]
        assert r["completed"] > 0
        assert r["server"]["executions"] > 0  # the statistics extension answered with this phase's work
        assert r["server"]["avg_batch"] >= 1
        assert r["server_cpu_pct"] is not None
