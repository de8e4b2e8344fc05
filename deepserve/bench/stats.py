"""Latency percentiles and the window-agreement rule that decides whether a level's result stands.

Percentiles are nearest-rank (the smallest observed value with at least p% of samples at or below
it), so every reported latency is one a request really had; p100 is the maximum.
A level is measured in K consecutive time windows; its result is accepted only when the windows
agree: each window's throughput and median latency lie within ``tolerance`` of their mean
(perf_analyzer's stability rule, which uses 10%).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

PERCENTILES = (50, 90, 95, 99)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of ``values`` (unsorted is fine); NaN for no values."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {p}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return float(ordered[rank - 1])


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p95/p99, mean and max in milliseconds."""
    ordered = sorted(latencies_s)
    out = {f"p{p}_ms": percentile(ordered, p) * 1e3 for p in PERCENTILES}
    out["mean_ms"] = (sum(ordered) / len(ordered) * 1e3) if ordered else math.nan
    out["max_ms"] = ordered[-1] * 1e3 if ordered else math.nan
    return out


@dataclass(frozen=True)
class Window:
    """One measurement window: completions inside [start, end) of the run's clock."""

    start: float
    end: float
    completed: int
    p50_ms: float
    p99_ms: float

    @property
    def throughput(self) -> float:
        return self.completed / (self.end - self.start) if self.end > self.start else 0.0


def split_windows(
    ends: Sequence[float], latencies: Sequence[float], start: float, end: float, k: int
) -> list[Window]:
    """Cut [start, end) into ``k`` equal windows and summarise the completions falling in each."""
    if k < 1:
        raise ValueError(f"need at least one window, got {k}")
    width = (end - start) / k
    buckets: list[list[float]] = [[] for _ in range(k)]
    for t, lat in zip(ends, latencies, strict=True):
        if start <= t < end or (t == end and width > 0):
            buckets[min(int((t - start) / width), k - 1) if width > 0 else 0].append(lat)
    return [
        Window(
            start + i * width,
            start + (i + 1) * width,
            len(b),
            percentile(b, 50) * 1e3,
            percentile(b, 99) * 1e3,
        )
        for i, b in enumerate(buckets)
    ]


def _finite_and_mean(values: Sequence[float]) -> tuple[list[float], float] | None:
    """The non-NaN values and their mean; None when fewer than two are left."""
    finite = [v for v in values if not math.isnan(v)]
    return (finite, sum(finite) / len(finite)) if len(finite) >= 2 else None


def spread(values: Sequence[float]) -> float:
    """(max - min) / mean, as a fraction; 0 for one value, inf when the mean is 0 but values differ."""
    found = _finite_and_mean(values)
    if found is None:
        return 0.0
    finite, mean = found
    if mean == 0:
        return 0.0 if max(finite) == min(finite) else math.inf
    return (max(finite) - min(finite)) / mean


def max_deviation(values: Sequence[float]) -> float:
    """Largest |v - mean| / mean, as a fraction (the quantity compared to the tolerance)."""
    found = _finite_and_mean(values)
    if found is None:
        return 0.0
    finite, mean = found
    if mean == 0:
        return 0.0 if max(finite) == min(finite) else math.inf
    return max(abs(v - mean) for v in finite) / mean


@dataclass(frozen=True)
class Agreement:
    stable: bool
    throughput_spread: float  # (max - min) / mean over windows
    p50_spread: float
    reason: str  # empty when stable


def windows_agree(windows: Sequence[Window], tolerance: float = 0.1) -> Agreement:
    """Accept a level when every window's throughput and p50 are within ``tolerance`` of the mean."""
    tput = [w.throughput for w in windows]
    p50 = [w.p50_ms for w in windows]
    t_dev, l_dev = max_deviation(tput), max_deviation(p50)
    reasons = []
    if any(w.completed == 0 for w in windows):
        reasons.append("a window had no completed request")
    if t_dev > tolerance:
        reasons.append(f"throughput varies {t_dev:.0%} from the mean across windows (> {tolerance:.0%})")
    if l_dev > tolerance:
        reasons.append(f"p50 latency varies {l_dev:.0%} from the mean across windows (> {tolerance:.0%})")
    return Agreement(not reasons, spread(tput), spread(p50), "; ".join(reasons))
