"""SLO mode: the highest throughput whose p99 latency stays under a target (goodput).

The search doubles the load level (concurrency, or request rate) from ``start`` until p99 breaks
the target, throughput stops growing, or ``max_level`` is reached; then it bisects between the
last level that met the target and the first that broke it. ``measure`` is injected, so the
search is tested on a synthetic latency curve and run for real by the sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Point:
    level: float
    throughput: float
    p99_ms: float


@dataclass
class SloResult:
    slo_p99_ms: float
    best: Point | None  # None: even the lowest level broke the target
    tried: list[Point] = field(default_factory=list)

    @property
    def goodput(self) -> float:
        return self.best.throughput if self.best else 0.0


def _ok(p: Point, slo_ms: float) -> bool:
    return p.p99_ms <= slo_ms


def search_slo(
    measure: Callable[[float], Point],
    slo_p99_ms: float,
    *,
    start: float = 1,
    max_level: float = 256,
    integer: bool = True,
    resolution: float = 0.1,
    plateau: float = 1.02,
) -> SloResult:
    """Find the level with the highest throughput whose p99 <= ``slo_p99_ms``.

    ``resolution``: stop bisecting when the gap is under this fraction of the lower level.
    ``plateau``: stop doubling once throughput grows by less than this factor (more load would
    only add queueing).
    """
    result = SloResult(slo_p99_ms, None)
    seen: dict[float, Point] = {}

    def run(level: float) -> Point:
        if level not in seen:
            seen[level] = measure(level)
            result.tried.append(seen[level])
        return seen[level]

    lo, hi = _double(run, slo_p99_ms, start, max_level, plateau)
    while lo is not None and hi is not None and hi - lo > max(resolution * lo, 1 if integer else 0):
        mid = (lo + hi) / 2
        mid = float(round(mid)) if integer else mid
        if mid in (lo, hi):
            break
        if _ok(run(mid), slo_p99_ms):
            lo = mid
        else:
            hi = mid
    passing = [p for p in result.tried if _ok(p, slo_p99_ms)]
    result.best = max(passing, key=lambda p: p.throughput) if passing else None
    return result


def _double(
    run: Callable[[float], Point], slo_ms: float, start: float, max_level: float, plateau: float
) -> tuple[float | None, float | None]:
    """Doubling phase: returns (last passing level, first failing level or None)."""
    level, last_ok, prev_tput = start, None, 0.0
    while level <= max_level:
        p = run(level)
        if not _ok(p, slo_ms):
            return last_ok, level
        last_ok = level
        if prev_tput and p.throughput < prev_tput * plateau:
            return last_ok, None
        prev_tput = p.throughput
        level *= 2
    return last_ok, None
