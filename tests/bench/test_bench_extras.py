"""--perf-analyzer skips with a clear message when its tool is absent (--compare: test_bench_compare.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepserve.bench import perf_analyzer
from deepserve.bench.inputs import InputSpec, ModelInfo
from deepserve.bench.sweep import RunConfig

INFO = ModelInfo("m", "classification", [InputSpec("features", "FP32", [-1, 4])], max_batch_size=8)


def test_perf_analyzer_skips_clearly_when_not_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("DEEPSERVE_PERF_ANALYZER", raising=False)
    monkeypatch.setattr(perf_analyzer, "_CANDIDATES", ())
    report = perf_analyzer.run_perf_analyzer(
        INFO, "http://127.0.0.1:1", None, "http", ["json"], "concurrency", [1], RunConfig(), tmp_path
    )
    assert not report.available and "not found" in report.summary()


def test_perf_analyzer_input_data_drops_the_batch_dim(tmp_path: Path) -> None:
    import json

    doc = json.loads(perf_analyzer.input_data(INFO, tmp_path, n=3).read_text())
    assert len(doc["data"]) == 3
    assert doc["data"][0]["features"]["shape"] == [4] and len(doc["data"][0]["features"]["content"]) == 4


def test_perf_analyzer_keeps_the_last_pass_of_an_unstable_run() -> None:
    out = (
        "  Pass [1] throughput: 96.5 infer/sec. Avg latency: 40061 usec (std 1 usec).\n"
        "  Pass [2] throughput: 707.4 infer/sec. Avg latency: 5640 usec (std 2 usec).\n"
    )
    (row,) = perf_analyzer._last_pass(out, "perf_analyzer http/json", 4)
    assert row["infer_per_s"] == 707.4 and row["avg_ms"] == 5.64 and row["stable"] is False
