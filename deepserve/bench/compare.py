"""Side by side: deepserve and its ``--compare`` peers per load generator, protocol and level.

One row per (load generator, protocol, level) with every server's throughput and p50 in it and
deepserve's throughput over each peer's (>1: deepserve ahead). The bench's own generator drives
every target of the sweep; perf_analyzer, when run, drives the servers that speak KServe v2
(TorchServe's /predictions it cannot). TorchServe's JSON row sits under ``http/json``: its own API
with the same rows. Rendered as a terminal table, a markdown table and compare.png (a panel per
generator and protocol, a line per server).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from deepserve.bench.sweep import LevelResult

BENCH, PERF_ANALYZER = "bench", "perf_analyzer"


@dataclass
class CompareRow:
    generator: str  # "bench" (the bench's own load generator) | "perf_analyzer"
    protocol: str  # "http/json", "http/binary", "grpc"
    level: float
    mode: str  # "concurrency" | "rate"
    throughput: dict[str, float] = field(default_factory=dict)  # server -> req/s (infer/s)
    p50_ms: dict[str, float] = field(default_factory=dict)
    ratio: dict[str, float] = field(default_factory=dict)  # peer -> ours / peer
    unsettled: list[str] = field(default_factory=list)  # servers whose windows did not agree

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _split(target: str) -> tuple[str, str]:
    """``"triton http/json"`` -> ("triton", "http/json")."""
    server, _, protocol = target.rpartition(" ")
    return server, protocol


def _cell(
    rows: dict[tuple[str, str, float], CompareRow], key: tuple[str, str, float], mode: str
) -> CompareRow:
    if key not in rows:
        rows[key] = CompareRow(key[0], key[1], key[2], mode)
    return rows[key]


def build(
    results: Iterable[LevelResult], pa_rows: Iterable[dict[str, Any]], ours: str, peers: Sequence[str]
) -> list[CompareRow]:
    """The comparison rows of a run (SLO-search levels left out); only rows where a peer was measured."""
    rows: dict[tuple[str, str, float], CompareRow] = {}
    for r in results:
        server, protocol = _split(r.target)
        if r.extra.get("slo_search") or server not in (ours, *peers):
            continue
        row = _cell(rows, (BENCH, protocol, r.level), r.mode)
        row.throughput[server], row.p50_ms[server] = r.items_per_s, r.latency["p50_ms"]
        row.unsettled += [] if r.stable else [server]
    for p in pa_rows:
        server, protocol = p.get("server", ours), p["run"].removeprefix("perf_analyzer ")
        protocol = "grpc" if protocol.startswith("grpc") else protocol
        if server not in (ours, *peers):
            continue
        row = _cell(rows, (PERF_ANALYZER, protocol, float(p["level"])), "concurrency")
        row.throughput[server], row.p50_ms[server] = p["infer_per_s"], p.get("p50_ms", math.nan)
        row.unsettled += [] if p.get("stable", True) else [server]
    out = []
    order = {"http/json": 0, "http/binary": 1, "grpc": 2}
    for row in sorted(rows.values(), key=lambda r: (r.generator != BENCH, order.get(r.protocol, 3), r.level)):
        mine = row.throughput.get(ours)
        for peer in peers:
            theirs = row.throughput.get(peer)
            if mine is not None and theirs:
                row.ratio[peer] = mine / theirs
        if any(p in row.throughput for p in peers):
            out.append(row)
    return out


def from_dicts(docs: Iterable[dict[str, Any]]) -> list[CompareRow]:
    return [CompareRow(**d) for d in docs]


def behind(rows: Sequence[CompareRow]) -> list[str]:
    """Where deepserve answered less than a peer: "perf_analyzer http/json c=8 vs triton (0.93x)"."""
    return [
        f"{r.generator} {r.protocol} {_level(r)} vs {peer} ({x:.2f}x)"
        for r in rows
        for peer, x in r.ratio.items()
        if x < 1
    ]


def _level(r: CompareRow) -> str:
    return f"{'c' if r.mode == 'concurrency' else 'rate'}={r.level:g}"


def _num(x: float | None, digits: int = 0) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:,.{digits}f}"


def _columns(ours: str, peers: Sequence[str]) -> list[str]:
    return ["generator", "protocol", "level", *[f"{s} /s (p50 ms)" for s in (ours, *peers)],
            *[f"{ours}/{p}" for p in peers]]  # fmt: skip


def _cells(r: CompareRow, ours: str, peers: Sequence[str]) -> list[str]:
    cells = [r.generator, r.protocol, _level(r)]
    for s in (ours, *peers):
        t, mark = r.throughput.get(s), "~" if s in r.unsettled else ""
        cells.append("-" if t is None else f"{mark}{_num(t)} ({_num(r.p50_ms.get(s), 2)})")
    return cells + [f"{r.ratio[p]:.2f}x" if p in r.ratio else "-" for p in peers]


def table(rows: Sequence[CompareRow], ours: str, peers: Sequence[str]) -> Table:
    t = Table(title=f"{ours} beside {', '.join(peers)} (same run, same rows)", header_style="bold")
    for c in _columns(ours, peers):
        t.add_column(c, justify="left" if c in ("generator", "protocol") else "right")
    for r in rows:
        t.add_row(*_cells(r, ours, peers), style="yellow" if any(x < 1 for x in r.ratio.values()) else None)
    return t


UNSETTLED_NOTE = "~: that figure's measurement windows did not agree (a noisy level)"


def markdown(rows: Sequence[CompareRow], ours: str, peers: Sequence[str]) -> str:
    """A markdown table; a ratio below 1 (deepserve behind) is bold, an unsettled figure marked ~."""
    cols = _columns(ours, peers)
    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" if i < 3 else "--:" for i in range(len(cols))) + "|",
    ]
    for r in rows:
        cells = _cells(r, ours, peers)
        k = len(cells) - len(peers)
        cells[k:] = [
            f"**{c}**" if p in r.ratio and r.ratio[p] < 1 else c
            for c, p in zip(cells[k:], peers, strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[CompareRow], ours: str, peers: Sequence[str], path: Path) -> Path | None:
    """compare.png: throughput against load level, a panel per (generator, protocol), a line per server."""
    panels = list(dict.fromkeys((r.generator, r.protocol) for r in rows))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2 if len(panels) == 4 else min(len(panels), 3)
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.8 * nrows), squeeze=False)
    for ax, (gen, proto) in zip(axes.flat, panels, strict=False):
        mine = [r for r in rows if (r.generator, r.protocol) == (gen, proto)]
        for i, server in enumerate((ours, *peers)):
            pts = [(r.level, r.throughput[server]) for r in mine if server in r.throughput]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", color=f"C{i}", label=server)
        xlabel = "concurrent clients" if mine[0].mode == "concurrency" else "offered rate (req/s)"
        ax.set(title=f"{proto} ({'perf_analyzer' if gen == PERF_ANALYZER else 'bench generator'})",
               xlabel=xlabel, ylabel="req/s")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
