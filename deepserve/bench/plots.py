"""PNG plots: throughput vs load level, and latency percentiles vs throughput, one line per target."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepserve.bench.sweep import LevelResult


def _by_target(results: Sequence[LevelResult]) -> dict[str, list[LevelResult]]:
    groups: dict[str, list[LevelResult]] = {}
    for r in results:
        groups.setdefault(r.target, []).append(r)
    return {k: sorted(v, key=lambda r: r.level) for k, v in groups.items()}


def _throughput(ax: Any, results: Sequence[LevelResult], title: str, ceiling: float | None) -> None:
    for label, rs in _by_target(results).items():
        ax.plot([r.level for r in rs], [r.items_per_s for r in rs], marker="o", label=label)
    if ceiling:
        ax.axhline(ceiling, linestyle="--", color="grey", label=f"in-process ceiling {ceiling:,.0f}/s")
    mode = results[0].mode if results else "concurrency"
    xlabel = "concurrent clients" if mode == "concurrency" else "offered rate (req/s)"
    ax.set(xlabel=xlabel, ylabel="items / s", title=f"{title}: throughput")
    ax.set_xscale("log", base=2)
    peak = max((r.items_per_s for r in results), default=0.0)
    if ceiling and peak and ceiling > 5 * peak:
        ax.set_yscale("log")  # keep the served curves readable under a far-away ceiling
    ax.legend(fontsize=8)


def _latency(ax: Any, results: Sequence[LevelResult], title: str) -> None:
    for i, (label, rs) in enumerate(_by_target(results).items()):
        for p, style in (("p50", "-"), ("p99", "--")):
            x, y = [r.items_per_s for r in rs], [r.latency[f"{p}_ms"] for r in rs]
            ax.plot(x, y, style, marker="o", color=f"C{i}", label=f"{label} {p}")
    ax.set(xlabel="items / s", ylabel="latency (ms)", title=f"{title}: latency vs throughput")
    ax.set_yscale("log")
    ax.legend(fontsize=7)


def plot(
    results: Sequence[LevelResult], out_dir: Path, title: str, ceiling: float | None = None
) -> list[Path]:
    """Write throughput.png and latency.png into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [out_dir / "throughput.png", out_dir / "latency.png"]
    for path, draw in zip(paths, (lambda ax: _throughput(ax, results, title, ceiling),
                                  lambda ax: _latency(ax, results, title)), strict=True):  # fmt: skip
        fig, ax = plt.subplots(figsize=(7, 4.5))
        draw(ax)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return paths
