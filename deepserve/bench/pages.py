"""Results pages: run `deepserve bench` commands and turn their results into markdown sections.

A suite keeps two folders apart: each run's raw output (results.json / .csv, server and naive
logs, perf_analyzer files) goes under ``--raw`` (default ``bench/out/<suite>``, not in git); the
published page under ``--out`` (default ``bench/results/<suite>``) holds only REPORT.md, the plots
of each run and ``summary.json``, the compact figures the page was written from.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from deepserve.bench import report
from deepserve.bench.sweep import LevelResult

PLOTS = ("throughput.png", "latency.png")
COMPARE_PLOT = "compare.png"  # only a run with --compare peers has it
_DOC_KEYS = ("model", "label", "started", "machine", "server", "task", "ceiling", "perf_analyzer", "peers",
             "peers_skipped", "comparison")  # fmt: skip


def compact(doc: dict[str, Any]) -> dict[str, Any]:
    """What a page reads of a run's results.json: no per-window figures, no error bodies, no logs."""
    kept = {k: doc[k] for k in (*_DOC_KEYS, "argv", "plots") if k in doc}
    kept["results"] = [{k: v for k, v in r.items() if k not in ("windows", "error_samples")}
                       for r in doc["results"]]  # fmt: skip
    return kept


def run_bench(argv: list[str], plots: Path) -> dict[str, Any]:
    """Run one `deepserve bench` command, copy its plots to ``plots``; returns its compact results."""
    from deepserve.bench.__main__ import main

    out = Path(argv[argv.index("--out") + 1])
    print("$ deepserve bench " + shlex.join(argv), flush=True)
    if main(argv) != 0:
        raise SystemExit(f"deepserve bench {shlex.join(argv)} failed")
    doc: dict[str, Any] = json.loads((out / "results.json").read_text())
    plots.mkdir(parents=True, exist_ok=True)
    for name in (*PLOTS, COMPARE_PLOT):
        if (out / name).is_file():
            shutil.copyfile(out / name, plots / name)
    return compact({**doc, "argv": argv, "plots": str(plots)})


def write_summary(docs: dict[str, dict[str, Any]], page_dir: Path) -> None:
    """``summary.json``: the compact results of every run on the page, by title."""
    (page_dir / "summary.json").write_text(json.dumps(docs, indent=1) + "\n")


def read_summary(page_dir: Path) -> dict[str, dict[str, Any]]:
    path = page_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def results_of(doc: dict[str, Any]) -> list[LevelResult]:
    return [LevelResult.from_dict(d) for d in doc["results"]]


def pick(doc: dict[str, Any], target: str, level: float) -> LevelResult | None:
    for d in doc["results"]:
        if d["target"] == target and d["level"] == level and not d["extra"].get("slo_search"):
            return LevelResult.from_dict(d)
    return None


def section(title: str, doc: dict[str, Any], page_dir: Path) -> str:
    """One run: its command, ceiling, notes, table and plots (linked relative to ``page_dir``)."""
    lines = [f"### {title}", "", f"`deepserve bench {shlex.join(doc['argv'])}`", ""]
    c = doc.get("ceiling")
    if c:
        runs = ", ".join(f"{x:,.1f}" for x in c.get("runs", [])) or f"{c['items_per_s']:,.1f}"
        lines += [f"In-process ceiling: **{c['items_per_s']:,.1f} items/s** at batch {c['best_batch']} "
                  f"(before/after the sweep: {runs}; {c['runtime']})."]  # fmt: skip
    server = doc.get("server") or {}
    if server.get("ready_s") is not None:
        lines.append(f"Server ready {server['ready_s']:.2f} s after start.")
    m = doc.get("machine", {})
    lines += [f"Load average at start / end: {m.get('loadavg')} / {m.get('loadavg_end')}.", ""]
    lines += [report.markdown_table(results_of(doc)), ""]
    rel = Path(os.path.relpath(doc["plots"], page_dir)).as_posix()
    lines += [f"![throughput]({rel}/throughput.png) ![latency]({rel}/latency.png)", ""]
    if doc.get("comparison"):
        lines += [comparison_section(doc), f"![side by side]({rel}/{COMPARE_PLOT})", ""]
    return "\n".join(lines)


def comparison_section(doc: dict[str, Any]) -> str:
    """The run's peers, how each ran, and the side-by-side table (deepserve / peer per level)."""
    from deepserve.bench import compare

    ours, peers = doc.get("label", "deepserve"), list(doc.get("peers", {}))
    rows = compare.from_dicts(doc["comparison"])
    lines = [f"Side by side, same run and rows: {ours} / peer > 1 means {ours} answered more.", ""]
    lines += [f"- {name}: {note}" for name, note in doc.get("peers", {}).items()]
    lines += [f"- {line}" for line in doc.get("peers_skipped", [])]
    lines += ["", compare.markdown(rows, ours, peers), "", compare.UNSETTLED_NOTE, ""]
    lagging = compare.behind(rows)
    verdict = f"{ours} behind at: {'; '.join(lagging)}." if lagging else f"{ours} ahead at every level."
    lines += [verdict, ""]
    return "\n".join(lines)
