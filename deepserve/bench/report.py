"""The run's results as a terminal table, a CSV (one row per target and level) and a JSON document."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from deepserve.bench.sweep import LevelResult


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def _errors(r: LevelResult) -> str:
    return ", ".join(f"{k}:{v}" for k, v in r.errors.items()) or "0"


def table(results: Sequence[LevelResult], title: str) -> Table:
    gen = any(r.generation for r in results)
    t = Table(title=title, header_style="bold")
    cols = [
        "target",
        "level",
        "req/s",
        "items/s",
        "% ceil",
        "p50 ms",
        "p90 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "spread",
        "ok",
        "batch",
        "queue ms",
        "compute ms",
        "cpu cli/srv %",
    ]
    cols += ["TTFT p50/p99 ms", "ITL p50 ms", "tok/s"] if gen else []
    for c in cols:
        t.add_column(c, justify="left" if c in ("target", "errors") else "right")
    for r in results:
        s, lat = r.server or {}, r.latency
        row = [
            r.target,
            f"{'c' if r.mode == 'concurrency' else 'r'}={r.level:g}",
            _f(r.rps),
            _f(r.items_per_s),
            _f(r.pct_of_ceiling, 0),
            _f(lat["p50_ms"], 2),
            _f(lat["p90_ms"], 2),
            _f(lat["p95_ms"], 2),
            _f(lat["p99_ms"], 2),
            _errors(r),
            f"{r.spread_rps:.0%}",
            "yes" if r.stable else "NO",
            _f(s.get("avg_batch"), 1),
            _f(s.get("queue_ms"), 2),
            _f(s.get("compute_ms"), 2),
            f"{r.client_cpu_pct:.0f}/{_f(r.server_cpu_pct, 0)}",
        ]
        if gen:
            g = r.generation or {}
            row += [
                f"{_f(g.get('ttft_p50_ms'), 0)}/{_f(g.get('ttft_p99_ms'), 0)}",
                _f(g.get("itl_p50_ms"), 2),
                _f(g.get("tokens_per_s"), 1),
            ]
        t.add_row(*row, style=None if r.stable else "yellow")
    return t


def flat_row(r: LevelResult) -> dict[str, Any]:
    row: dict[str, Any] = {
        "target": r.target,
        "mode": r.mode,
        "level": r.level,
        "completed": r.completed,
        "duration_s": round(r.duration_s, 3),
        "rps": r.rps,
        "items_per_s": r.items_per_s,
        "pct_of_ceiling": r.pct_of_ceiling,
        **r.latency,
        "errors": sum(r.errors.values()),
        "errors_by_status": ";".join(f"{k}={v}" for k, v in r.errors.items()),
        "stable": r.stable,
        "spread_rps": r.spread_rps,
        "spread_p50": r.spread_p50,
        "client_cpu_pct": r.client_cpu_pct,
        "server_cpu_pct": r.server_cpu_pct,
    }
    row.update({f"server_{k}": v for k, v in (r.server or {}).items()})
    row.update(r.generation or {})
    return row


def write_csv(results: Sequence[LevelResult], path: Path) -> None:
    rows = [flat_row(r) for r in results]
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def _clean(x: Any) -> Any:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(_clean(doc), indent=2) + "\n")


def markdown_table(results: Sequence[LevelResult]) -> str:
    """A compact markdown table of the results (for the results pages)."""
    gen = any(r.generation for r in results)
    head = ("| target | level | req/s | items/s | % of in-process | p50 ms | p90 ms | p99 ms | errors "
            "| windows agree | server batch | queue ms | compute ms | client / server CPU % |")  # fmt: skip
    rule = "|---|---|--:|--:|--:|--:|--:|--:|---|---|--:|--:|--:|--:|"
    if gen:
        head, rule = head + " TTFT p50 / p99 ms | ITL p50 / p99 ms | tokens/s |", rule + "--:|--:|--:|"
    lines = [head, rule]
    for r in results:
        s, lat = r.server or {}, r.latency
        row = (
            f"| {r.target} | {'c' if r.mode == 'concurrency' else 'rate'}={r.level:g} | {_f(r.rps)} "
            f"| {_f(r.items_per_s)} | {_f(r.pct_of_ceiling, 0)} | {_f(lat['p50_ms'], 2)} "
            f"| {_f(lat['p90_ms'], 2)} | {_f(lat['p99_ms'], 2)} | {_errors(r)} "
            f"| {'yes' if r.stable else 'no'} ({r.spread_rps:.0%}) "
            f"| {_f(s.get('avg_batch'), 1)} | {_f(s.get('queue_ms'), 2)} | {_f(s.get('compute_ms'), 2)} "
            f"| {r.client_cpu_pct:.0f} / {_f(r.server_cpu_pct, 0)} |"
        )
        if gen:
            g = r.generation or {}
            row += (f" {_f(g.get('ttft_p50_ms'), 1)} / {_f(g.get('ttft_p99_ms'), 1)} "
                    f"| {_f(g.get('itl_p50_ms'), 2)} / {_f(g.get('itl_p99_ms'), 2)} "
                    f"| {_f(g.get('tokens_per_s'), 1)} |")  # fmt: skip
        lines.append(row)
    return "\n".join(lines)
