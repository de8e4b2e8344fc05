"""`deepserve bench --suite NAME`: dispatch, the page's compact figures, plots beside the page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deepserve.bench import pages
from deepserve.bench.__main__ import main
from deepserve.bench.suites import SUITES, classifiers, defaults
from deepserve.bench.sweep import LevelResult

REPO = Path(__file__).resolve().parents[2]


def _row(target: str = "deepserve http/binary", level: float = 32.0) -> dict[str, Any]:
    return LevelResult(
        target=target, mode="concurrency", level=level, completed=100, duration_s=1.0, rps=100.0,
        items_per_s=100.0, latency={"p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0}, errors={},
        error_samples={"503": "queue full"}, stable=True, spread_rps=0.01, spread_p50=0.01,
        unstable_reason="", windows=[{"rps": 100.0, "p50_ms": 1.0, "p99_ms": 3.0}], client_cpu_pct=5.0,
    ).as_dict()  # fmt: skip


def _doc(argv: list[str], plots: Path) -> dict[str, Any]:
    return {"model": argv[0], "machine": {"loadavg": [0.1], "loadavg_end": [0.2]}, "results": [_row()],
            "argv": argv, "plots": str(plots)}  # fmt: skip


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_every_suite_answers_help(suite: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--suite", suite, "--help"])
    assert exit_.value.code == 0
    assert f"deepserve bench --suite {suite}" in capsys.readouterr().out


def test_compact_drops_windows_and_error_bodies_and_still_reads_back(tmp_path: Path) -> None:
    doc = pages.compact({**_doc(["m", "--out", "x"], tmp_path), "config": {}, "notes": ["n"]})
    assert set(doc) == {"model", "machine", "results", "argv", "plots"}
    assert "windows" not in doc["results"][0] and "error_samples" not in doc["results"][0]
    assert LevelResult.from_dict(doc["results"][0]).rps == 100.0


def test_run_bench_copies_only_the_plots_to_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, page = tmp_path / "raw" / "run", tmp_path / "page" / "run"

    def fake_main(argv: list[str]) -> int:
        raw.mkdir(parents=True)
        (raw / "results.json").write_text(json.dumps({"model": "m", "results": [_row()]}))
        for name in ("throughput.png", "latency.png", "server.log", "results.csv"):
            (raw / name).write_bytes(b"x")
        return 0

    monkeypatch.setattr("deepserve.bench.__main__.main", fake_main)
    doc = pages.run_bench(["m", "--out", str(raw)], page)
    assert sorted(p.name for p in page.iterdir()) == ["latency.png", "throughput.png"]
    assert doc["plots"] == str(page) and doc["argv"] == ["m", "--out", str(raw)]


def test_defaults_writes_raw_apart_and_reuses_the_page_with_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, out, raw = tmp_path / "store", tmp_path / "page", tmp_path / "raw"
    for name in ("digits-cnn", "tabular-mlp"):
        (store / name).mkdir(parents=True)
    image = "Image classifier (digits-cnn), binary tensors"
    out.mkdir()
    earlier = _doc(["digits-cnn", "--out", str(raw / "0-digits-cnn")], out / "0-digits-cnn")
    pages.write_summary({image: earlier}, out)
    ran: list[list[str]] = []

    def fake_run_bench(argv: list[str], plots: Path) -> dict[str, Any]:
        ran.append(argv)
        return _doc(argv, plots)

    monkeypatch.setattr(defaults, "run_bench", fake_run_bench)
    argv = ["--store", str(store), "--out", str(out), "--raw", str(raw), "--only", "Tabular"]
    assert main(["--suite", "defaults", *argv]) == 0
    assert [a[0] for a in ran] == ["tabular-mlp"]
    assert ran[0][ran[0].index("--out") + 1] == str(raw / "1-tabular-mlp")
    report = (out / "REPORT.md").read_text()
    assert "Command: `deepserve bench --suite defaults" in report
    assert "![throughput](0-digits-cnn/throughput.png)" in report
    assert "![throughput](1-tabular-mlp/throughput.png)" in report
    assert set(pages.read_summary(out)) == {image, "Tabular MLP (tabular-mlp), JSON"}


@pytest.mark.parametrize("suite", ["classifiers", "defaults", "compare"])
def test_the_committed_pages_link_only_files_that_exist(suite: str) -> None:
    page = REPO / "bench" / "results" / suite
    summary = pages.read_summary(page)
    assert summary, f"{page}/summary.json is missing"
    for doc in summary.values():
        for name in (*pages.PLOTS, *([pages.COMPARE_PLOT] if doc.get("comparison") else [])):
            assert (REPO / doc["plots"] / name).is_file()
    assert not [p for p in page.rglob("*") if p.suffix in (".log", ".csv")], "raw output in the page"


def test_classifiers_page_renders_from_its_summary() -> None:
    page = REPO / "bench" / "results" / "classifiers"
    docs = pages.read_summary(page)
    text = classifiers.render(docs["resnet18"], docs["mlp"], "deepserve bench --suite classifiers", page)
    assert "### Targets" in text and "![throughput](resnet18/throughput.png)" in text
    assert "gRPC no slower than HTTP (perf_analyzer drives both)" in text


def test_compare_page_renders_from_its_summary() -> None:
    page = REPO / "bench" / "results" / "compare"
    doc = pages.read_summary(page)["mlp"]
    text = pages.section("Tiny MLP", doc, page)
    assert "| generator | protocol | level | deepserve /s (p50 ms)" in text and "deepserve/triton" in text
    assert "![side by side](mlp/compare.png)" in text
