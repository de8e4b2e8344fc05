"""`--compare` end to end: deepserve (started by the bench) beside its peers in one very short sweep.

The naive peer always runs; Triton runs when PyTriton is in the tools venv (.ci/tools.sh installs
it) and is skipped only then; when it is installed, a Triton failure fails the test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deepserve.bench import perf_analyzer, triton_peer
from deepserve.bench.__main__ import main

pytestmark = pytest.mark.e2e

SHORT = ["--quick", "--warmup", "0.2", "--duration", "0.6", "--no-ceiling", "--no-install"]


def _bench(store: Path, out: Path, *extra: str) -> dict[str, Any]:
    assert main(["tiny-mlp", "--store", str(store), *SHORT, "--out", str(out), *extra]) == 0
    return json.loads((out / "results.json").read_text())


def _clean(results: list[dict[str, Any]]) -> None:
    for r in results:
        assert r["errors"] == {}, (r["target"], r["error_samples"])
        assert r["completed"] > 0


def test_naive_peer_side_by_side_and_a_missing_peer_skipped(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEEPSERVE_TOOLS_DIR", str(tmp_path / "no-tools"))  # triton: absent, not installed
    doc = _bench(tiny_store, tmp_path, "--concurrency", "1,2", "--compare", "triton,naive")
    assert [(r["target"], r["level"]) for r in doc["results"]] == [
        ("deepserve http/json", 1), ("deepserve http/json", 2),
        ("naive-fastapi http/json", 1), ("naive-fastapi http/json", 2),
    ]  # fmt: skip
    _clean(doc["results"])
    (skipped,) = doc["peers_skipped"]
    assert skipped.startswith("--compare triton skipped: no PyTriton at") and skipped in doc["notes"]
    assert list(doc["peers"]) == ["naive-fastapi"]
    rows = doc["comparison"]
    assert [(r["generator"], r["protocol"], r["level"]) for r in rows] == [
        ("bench", "http/json", 1),
        ("bench", "http/json", 2),
    ]
    for row in rows:
        assert row["ratio"]["naive-fastapi"] == pytest.approx(
            row["throughput"]["deepserve"] / row["throughput"]["naive-fastapi"]
        )
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_triton_through_pytriton_serves_the_same_model(tiny_store: Path, tmp_path: Path) -> None:
    if not triton_peer.usable(triton_peer.venv_python()):
        pytest.skip(f"PyTriton is not installed at {triton_peer.venv_python()} (bash .ci/tools.sh)")
    with_pa = perf_analyzer.find_binary() is not None
    extra = ["--perf-analyzer"] if with_pa else []
    doc = _bench(
        tiny_store, tmp_path, "--concurrency", "2", "--protocol", "both", "--compare", "triton", *extra
    )
    triton = [r for r in doc["results"] if r["target"].startswith("triton ")]
    assert [r["target"] for r in triton] == ["triton http/json", "triton grpc"], doc["notes"]
    _clean(triton)
    for r in triton:  # Triton's own statistics: its dynamic batcher ran these requests
        assert r["server"]["executions"] > 0 and r["server"]["avg_batch"] >= 1
        assert r["server_cpu_pct"] > 0  # tritonserver and the PyTriton host, counted as one tree
    assert "Triton 2." in doc["peers"]["triton"] and "max batch 32" in doc["peers"]["triton"]
    rows = {(r["generator"], r["protocol"]): r for r in doc["comparison"]}
    assert {"triton", "deepserve"} <= set(rows[("bench", "grpc")]["throughput"])
    assert rows[("bench", "http/json")]["ratio"]["triton"] > 0
    if with_pa:
        pa = [r for r in doc["perf_analyzer"]["rows"] if r["server"] == "triton"]
        assert {r["run"] for r in pa} == {"perf_analyzer http/json", "perf_analyzer grpc/binary"}, doc[
            "notes"
        ]
        assert ("perf_analyzer", "grpc") in rows
