"""Run targets over load levels with a progress display; the SLO search on top of the same measure."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from deepserve.bench.slo import Point, SloResult, search_slo
from deepserve.bench.sweep import LevelResult, RunConfig, Target, measure


def _progress(console: Console) -> Progress:
    # a slow refresh: the display runs in a thread of the client process and must cost ~nothing
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=2,
        transient=False,
    )


def _note(r: LevelResult) -> str:
    errs = sum(r.errors.values())
    return (
        f"{r.rps:,.0f} req/s p99 {r.latency['p99_ms']:.1f} ms"
        + (f" {errs} errors" if errs else "")
        + ("" if r.stable else " (windows disagree)")
    )


def sweep(
    targets: Sequence[Target], mode: str, levels: Sequence[float], cfg: RunConfig, console: Console
) -> list[LevelResult]:
    """Every target at every level, level by level: at each level the targets run back to back, so
    on a shared machine they see the same background load. Results come back grouped by target."""
    results: dict[str, list[LevelResult]] = {t.label: [] for t in targets}
    with _progress(console) as progress:
        tasks = {t.label: progress.add_task(t.label, total=len(levels), info="") for t in targets}
        for level in levels:
            for target in targets:
                task = tasks[target.label]
                progress.update(
                    task, description=f"{target.label} {'c' if mode == 'concurrency' else 'rate'}={level:g}"
                )
                r = measure(target, mode, level, cfg,
                            on_tick=lambda n, t=task: progress.update(t, info=f"{n:,} answers"))  # fmt: skip
                results[target.label].append(r)
                progress.update(task, advance=1, info=_note(r))
    return [r for t in targets for r in results[t.label]]


def slo_search(
    target: Target,
    mode: str,
    slo_p99_ms: float,
    cfg: RunConfig,
    console: Console,
    *,
    start: float = 1,
    max_level: float = 256,
) -> tuple[SloResult, list[LevelResult]]:
    """Search levels for the goodput of one target; returns the search and every level measured."""
    measured: list[LevelResult] = []

    with _progress(console) as progress:
        task = progress.add_task(f"SLO p99<={slo_p99_ms:g}ms {target.label}", total=None, info="")

        def run(level: float) -> Point:
            progress.update(task, info=f"trying {mode} {level:g}")
            r = measure(target, mode, level, cfg)
            measured.append(r)
            ok = not r.errors
            p99 = r.latency["p99_ms"] if ok else float("inf")  # errors never count as meeting the SLO
            return Point(level, r.items_per_s, p99)

        result = search_slo(run, slo_p99_ms, start=start, max_level=max_level, integer=mode == "concurrency")
    return result, measured
