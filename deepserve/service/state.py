"""Process-wide serving state shared by both transports: draining flag, its deadline, in-flight count."""

from __future__ import annotations

import asyncio
import time


class ServerState:
    def __init__(self) -> None:
        self.draining = False
        self.inflight = 0
        self.started = time.time()
        self._idle = asyncio.Event()
        self._idle.set()
        self._drain_deadline: float | None = None

    def begin_drain(self, timeout: float) -> None:
        """Start draining (once): every later step of the shutdown shares this one deadline, so
        the steps together take ``timeout``, not ``timeout`` each (the pod's grace period counts)."""
        self.draining = True
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + timeout

    def drain_time_left(self) -> float:
        if self._drain_deadline is None:
            return 0.0
        return max(0.0, self._drain_deadline - time.monotonic())

    def enter(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight <= 0:
            self.inflight = 0
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True when every in-flight request finished within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
