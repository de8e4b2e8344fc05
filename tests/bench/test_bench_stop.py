"""When a level's measured phase ends: duration, request bound, and the extension for bursty servers."""

from __future__ import annotations

import time

from deepserve.bench.samples import Recorder, StopRule
from deepserve.bench.sweep import RunConfig, stop_rule


def _recorder(measured: int) -> Recorder:
    rec = Recorder(measure_from=0.0)
    for i in range(measured):
        rec.add(0.0, 1.0 + i, "200")
    return rec


def test_stops_at_the_deadline_once_enough_answers_are_in() -> None:
    now = time.perf_counter()
    rule = StopRule(now - 10, stop_at=now - 1, max_measured=1000, min_measured=5, hard_stop=now + 60)
    assert not rule.done(_recorder(4))  # past the deadline but a burst short: keep measuring
    assert rule.done(_recorder(5))
    assert rule.stopped_at is not None and rule.done(_recorder(0))  # once fired, it stays fired


def test_request_bound_and_hard_stop_win() -> None:
    now = time.perf_counter()
    assert StopRule(now, stop_at=now + 60, max_measured=3).done(_recorder(3))
    assert StopRule(now - 10, stop_at=now - 5, max_measured=100, min_measured=50, hard_stop=now - 1).done(
        _recorder(1)
    )
    assert not StopRule(now, stop_at=now + 60, max_measured=3).done(_recorder(2))


def test_extension_scales_with_clients_and_windows() -> None:
    cfg = RunConfig(duration_s=10, windows=3, min_per_window=2, max_duration_s=60)
    rule = stop_rule(cfg, "concurrency", 32, measure_from=100.0)
    assert rule.min_measured == 2 * 32 * 3
    assert rule.stop_at == 110.0 and rule.hard_stop == 160.0
    assert stop_rule(cfg, "rate", 500.0, measure_from=0.0).min_measured == 6
