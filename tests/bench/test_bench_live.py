"""The sweep end to end in quick mode against a live stand-in server (HTTP JSON/binary, gRPC, SSE)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deepserve.bench import launcher
from deepserve.bench.__main__ import main

FAST = ["--quick", "--warmup", "0.3", "--duration", "1.0"]


def _bench(argv: list[str], out: Path) -> dict[str, Any]:
    assert main([*argv, *FAST, "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())


def test_quick_sweep_over_protocols_and_formats(standin: launcher.Server, tmp_path: Path) -> None:
    doc = _bench(
        [
            "tiny",
            "--url",
            standin.url,
            "--grpc-url",
            str(standin.grpc_target),
            "--protocol",
            "both",
            "--format",
            "both",
            "--concurrency",
            "1,4",
        ],
        tmp_path,
    )
    results = doc["results"]
    assert [(r["target"], r["level"]) for r in results] == [
        (t, c) for t in ("deepserve http/json", "deepserve http/binary", "deepserve grpc") for c in (1, 4)
    ]
    for r in results:
        assert r["completed"] > 0 and r["rps"] > 0 and r["errors"] == {}
        assert r["latency"]["p50_ms"] <= r["latency"]["p99_ms"] <= r["latency"]["max_ms"]
        assert len(r["windows"]) == 2
        assert 0 < r["client_cpu_pct"] < 250
        # the stand-in runs one request per execution: the stats deltas must say batch 1
        assert r["server"]["executions"] > 0 and r["server"]["avg_batch"] == pytest.approx(1.0)
    csv_lines = (tmp_path / "results.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + len(results)
    for png in ("throughput.png", "latency.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_server_that_errors_is_reported_not_hidden(standin: launcher.Server, tmp_path: Path) -> None:
    doc = _bench(["broken", "--url", standin.url, "--concurrency", "2"], tmp_path)
    (r,) = doc["results"]
    assert r["errors"]["500"] > 0
    assert r["errors"]["500"] == pytest.approx(r["completed"], rel=0.2)  # every other request fails
    assert "stand-in failure" in r["error_samples"]["500"]
    assert r["stable"] is False
    assert "500=" in (tmp_path / "results.csv").read_text()


def test_open_loop_poisson_rate_is_offered(standin: launcher.Server, tmp_path: Path) -> None:
    doc = _bench(["tiny", "--url", standin.url, "--rate", "200"], tmp_path)
    (r,) = doc["results"]
    assert r["mode"] == "rate"
    assert r["rps"] == pytest.approx(200, rel=0.35)


def test_generation_streams_report_ttft_itl_and_tokens(standin: launcher.Server, tmp_path: Path) -> None:
    doc = _bench(["gen", "--url", standin.url, "--concurrency", "2"], tmp_path)
    (r,) = doc["results"]
    g = r["generation"]
    assert r["target"] == "deepserve openai/sse" and r["errors"] == {}
    assert g["streams"] > 0
    assert 1.5 < g["itl_p50_ms"] < 50  # the stand-in sleeps 2 ms between tokens
    assert 0 < g["ttft_p50_ms"] <= r["latency"]["p50_ms"]
    assert g["tokens_per_s"] == pytest.approx(5 * g["streams"] / r["duration_s"])


def test_ceiling_and_naive_baseline_on_a_real_onnx_file(tiny_store: Path, tmp_path: Path) -> None:
    vdir = tiny_store / "tiny-mlp" / "1"
    server = launcher.start_naive(vdir, "tiny-mlp", tmp_path / "naive0.log")
    try:
        doc = _bench(
            [
                "tiny-mlp",
                "--store",
                str(tiny_store),
                "--url",
                server.url,
                "--label",
                "under-test",
                "--naive",
                "--format",
                "binary",
                "--concurrency",
                "2",
            ],
            tmp_path / "out",
        )
    finally:
        server.stop()
    assert doc["ceiling"]["items_per_s"] > 0 and doc["ceiling"]["best_batch"] in (1, 8)
    assert [r["target"] for r in doc["results"]] == ["under-test http/binary", "naive-fastapi http/binary"]
    for r in doc["results"]:
        assert r["errors"] == {} and r["completed"] > 0
        assert r["pct_of_ceiling"] == pytest.approx(100 * r["items_per_s"] / doc["ceiling"]["items_per_s"])
        assert r["server"] is None or r["server"]["executions"] == 0  # the naive server has no stats


def test_request_bound_ends_a_level_before_its_time_bound(standin: launcher.Server, tmp_path: Path) -> None:
    argv = ["tiny", "--url", standin.url, "--concurrency", "2", "--requests", "40", "--quick",
            "--warmup", "0.2", "--duration", "30", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    (r,) = json.loads((tmp_path / "results.json").read_text())["results"]
    assert r["completed"] == 40
    assert r["duration_s"] < 30


def test_slo_search_runs_against_a_live_server(standin: launcher.Server, tmp_path: Path) -> None:
    doc = _bench(["tiny", "--url", standin.url, "--concurrency", "1", "--slo-p99-ms", "2000",
                  "--slo-max-level", "4"], tmp_path)  # fmt: skip
    slo = doc["slo"]["deepserve http/json"]
    levels = [p["level"] for p in slo["tried"]]
    # every level meets a 2 s p99 on the stand-in: doubling goes on until max level or a plateau
    assert levels in ([1, 2], [1, 2, 4])
    assert all(p["p99_ms"] <= 2000 for p in slo["tried"])
    assert slo["goodput"] == max(p["throughput"] for p in slo["tried"])
    assert sum(1 for r in doc["results"] if r["extra"].get("slo_search")) == len(levels)
