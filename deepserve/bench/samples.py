"""What a load run records: one (start, end, status) per request, plus when measuring began.

Statuses are strings: the HTTP status ("200", "429", ...), the gRPC code name ("OK",
"UNAVAILABLE", ...), or "conn-error" / "timeout" for requests that got no answer at all. Kept as
plain lists so appending costs the load generator next to nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

OK_STATUSES = frozenset({"200", "OK"})


@dataclass
class Recorder:
    measure_from: float  # perf_counter time when warm-up ends
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    measured: int = 0  # completions since measure_from (for the request bound)
    first_error: dict[str, str] = field(default_factory=dict)  # status -> first response body seen
    first_ok: bytes = b""
    # generation streams: (end time, time to first token, inter-token gaps, tokens generated)
    streams: list[tuple[float, float, list[float], int]] = field(default_factory=list)

    def add_stream(self, end: float, ttft: float, gaps: list[float], tokens: int) -> None:
        self.streams.append((end, ttft, gaps, tokens))

    def add(self, start: float, end: float, status: str, body: bytes = b"") -> None:
        self.starts.append(start)
        self.ends.append(end)
        self.statuses.append(status)
        if end >= self.measure_from:
            self.measured += 1
        if status in OK_STATUSES:
            if not self.first_ok:
                self.first_ok = bytes(body[:2048])
        elif status not in self.first_error:
            self.first_error[status] = bytes(body[:300]).decode("utf-8", "replace")

    def window(self, start: float, end: float) -> tuple[list[float], list[float], Counter[str]]:
        """(completion times, latencies of successes, status counts) for completions in [start, end]."""
        ends, lats, codes = [], [], Counter[str]()
        for s, e, st in zip(self.starts, self.ends, self.statuses, strict=True):
            if start <= e <= end:
                codes[st] += 1
                if st in OK_STATUSES:
                    ends.append(e)
                    lats.append(e - s)
        return ends, lats, codes


@dataclass
class StopRule:
    """When a level's measured phase ends: at ``stop_at``, but not before ``min_measured`` completions
    (slow batching servers answer in bursts, and a few bursts make a meaningless rate), never past
    ``hard_stop``, and at once when ``max_measured`` completions are in."""

    measure_from: float
    stop_at: float
    max_measured: int
    min_measured: int = 0
    hard_stop: float = float("inf")
    stopped_at: float | None = None  # set when the rule first fires

    def done(self, rec: Recorder) -> bool:
        if self.stopped_at is not None:
            return True
        now = time.perf_counter()
        if (rec.measured >= self.max_measured or now >= self.hard_stop
                or (now >= self.stop_at and rec.measured >= self.min_measured)):  # fmt: skip
            self.stopped_at = now
            return True
        return False

    def force(self) -> None:
        if self.stopped_at is None:
            self.stopped_at = time.perf_counter()
