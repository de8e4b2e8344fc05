"""A wall-clock training budget (``TrainConfig.max_seconds``).

Loops stop between batches once it is spent, and the lr schedule reads ``fraction()`` so the
decay ends when the budget does, however many steps this machine manages in that time.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Budget:
    """Seconds since construction against an optional limit (None: never expires)."""

    def __init__(self, max_seconds: float | None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.max_seconds, self.clock = max_seconds, clock
        self.start = clock()

    def fraction(self) -> float:
        """Share of the budget spent, in [0, 1]; 0 without a limit."""
        if self.max_seconds is None:
            return 0.0
        return min(1.0, (self.clock() - self.start) / self.max_seconds)

    def expired(self) -> bool:
        return self.max_seconds is not None and self.fraction() >= 1.0
