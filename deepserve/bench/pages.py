"""Results pages: run `deepserve bench` commands and turn their results.json into markdown sections."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from deepserve.bench import report
from deepserve.bench.sweep import LevelResult


def run_bench(argv: list[str]) -> dict[str, Any]:
    """Run one `deepserve bench` command; returns its results.json (plus the argv under "argv")."""
    from deepserve.bench.__main__ import main

    out = Path(argv[argv.index("--out") + 1])
    print("$ deepserve bench " + shlex.join(argv), flush=True)
    if main(argv) != 0:
        raise SystemExit(f"deepserve bench {shlex.join(argv)} failed")
    doc: dict[str, Any] = json.loads((out / "results.json").read_text())
    doc["argv"] = argv
    return doc


def results_of(doc: dict[str, Any]) -> list[LevelResult]:
    return [LevelResult.from_dict(d) for d in doc["results"]]


def pick(doc: dict[str, Any], target: str, level: float) -> LevelResult | None:
    for d in doc["results"]:
        if d["target"] == target and d["level"] == level and not d["extra"].get("slo_search"):
            return LevelResult.from_dict(d)
    return None


def section(title: str, doc: dict[str, Any], page_dir: Path) -> str:
    """One run: its command, ceiling, notes, table and plots (linked relative to ``page_dir``)."""
    out = Path(doc["argv"][doc["argv"].index("--out") + 1])
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
    rel = os.path.relpath(out, page_dir)
    lines += [f"![throughput]({rel}/throughput.png) ![latency]({rel}/latency.png)", ""]
    return "\n".join(lines)
