"""Percentiles on known data and the window-agreement rule."""

from __future__ import annotations

import math

import pytest

from deepserve.bench import stats


def test_nearest_rank_percentiles_on_known_data() -> None:
    values = list(range(100, 0, -1))  # 1..100, unsorted on purpose
    assert stats.percentile(values, 50) == 50
    assert stats.percentile(values, 90) == 90
    assert stats.percentile(values, 99) == 99
    assert stats.percentile(values, 100) == 100
    assert stats.percentile(values, 0) == 1
    assert stats.percentile([7.0], 99) == 7.0
    assert stats.percentile([1, 2, 3, 4, 1000], 99) == 1000  # the tail is the one slow request
    assert stats.percentile([1, 2, 3, 4, 1000], 50) == 3
    assert math.isnan(stats.percentile([], 50))
    with pytest.raises(ValueError, match="percentile"):
        stats.percentile([1], 101)


def test_latency_summary_is_in_milliseconds() -> None:
    s = stats.latency_summary([i / 1000 for i in range(1, 201)])  # 1..200 ms
    assert s["p50_ms"] == pytest.approx(100)
    assert s["p90_ms"] == pytest.approx(180)
    assert s["p95_ms"] == pytest.approx(190)
    assert s["p99_ms"] == pytest.approx(198)
    assert s["max_ms"] == pytest.approx(200)
    assert s["mean_ms"] == pytest.approx(100.5)


def test_split_windows_counts_completions_per_window() -> None:
    ends = [0.1, 0.2, 0.3, 1.1, 1.5, 2.9, 3.0]
    lats = [0.01, 0.01, 0.01, 0.02, 0.02, 0.04, 0.04]
    wins = stats.split_windows(ends, lats, 0.0, 3.0, 3)
    assert [w.completed for w in wins] == [3, 2, 2]  # the completion at exactly the end counts in the last
    assert [w.throughput for w in wins] == [3, 2, 2]
    assert wins[2].p50_ms == pytest.approx(40)


def _windows(tputs: list[float], p50s: list[float]) -> list[stats.Window]:
    pairs = enumerate(zip(tputs, p50s, strict=True))
    return [stats.Window(i, i + 1, int(t), p, p * 2) for i, (t, p) in pairs]


def test_windows_that_agree_are_accepted_with_their_spread() -> None:
    verdict = stats.windows_agree(_windows([100, 104, 96], [10, 10.5, 9.8]), tolerance=0.1)
    assert verdict.stable and verdict.reason == ""
    assert verdict.throughput_spread == pytest.approx(0.08)


def test_throughput_disagreement_is_flagged() -> None:
    verdict = stats.windows_agree(_windows([100, 100, 60], [10, 10, 10]), tolerance=0.1)
    assert not verdict.stable
    assert "throughput" in verdict.reason
    assert verdict.throughput_spread == pytest.approx(40 / (260 / 3))


def test_latency_disagreement_and_empty_windows_are_flagged() -> None:
    assert "p50" in stats.windows_agree(_windows([100, 100, 100], [10, 10, 20])).reason
    assert "no completed" in stats.windows_agree(_windows([100, 0, 100], [10, 10, 10])).reason
