"""Process-wide serving state shared by both transports: draining flag and in-flight count."""

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
