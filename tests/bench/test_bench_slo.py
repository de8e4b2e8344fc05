"""The SLO search finds the right level on synthetic latency curves."""

from __future__ import annotations

from deepserve.bench.slo import Point, search_slo


def _curve(level: float) -> Point:
    # throughput grows with diminishing returns, p99 grows linearly: 5 ms + 2 ms per client
    return Point(level, 1000 * level / (level + 10), 5 + 2 * level)


def test_finds_the_highest_level_whose_p99_meets_the_target() -> None:
    calls: list[float] = []

    def measure(level: float) -> Point:
        calls.append(level)
        return _curve(level)

    result = search_slo(measure, 60, start=1, max_level=256, resolution=0)
    # p99 <= 60 ms  <=>  level <= 27.5; throughput increases with level, so 27 is the answer
    assert result.best is not None and result.best.level == 27
    assert result.goodput == _curve(27).throughput
    assert calls[:6] == [1, 2, 4, 8, 16, 32]  # doubling until the first miss, then bisection
    assert len(calls) == len(set(calls))  # no level measured twice
    assert all(p.p99_ms <= 60 for p in result.tried if p.level <= 27)


def test_coarse_resolution_stops_early_but_stays_under_the_target() -> None:
    result = search_slo(_curve, 60, resolution=0.25)
    assert result.best is not None and 20 <= result.best.level <= 27
    assert result.best.p99_ms <= 60


def test_no_level_meets_an_impossible_target() -> None:
    result = search_slo(_curve, 1.0)
    assert result.best is None and result.goodput == 0.0
    assert [p.level for p in result.tried] == [1]


def test_stops_doubling_when_throughput_plateaus() -> None:
    def flat(level: float) -> Point:
        return Point(level, min(level, 4) * 100, 1.0)  # saturates at 4 clients, latency always fine

    result = search_slo(flat, 50, max_level=1024)
    assert max(p.level for p in result.tried) == 8  # 8 gives no more than 4: stop there
    assert result.goodput == 400
