"""The pre/post-processing stage: handler work that can take milliseconds runs off the event loop.

Decoding a PNG, tokenising a batch of sentences or encoding a generated image takes long enough
to stall every other connection the loop serves, while turning a JSON tensor into an array takes
microseconds, less than a hand-off to a thread costs. So the stage measures each kind of work
(model, step, request kind) as it runs and decides per kind: what has cost less than
``inline_below`` on average runs on the loop, the rest in a small thread pool. A kind not seen yet
runs in the pool, so the first large image never blocks the loop; each run, wherever it ran,
updates the average, so a kind that turns slow moves back to the pool. Only runs that succeed are
measured: a flood of requests that fail at once must not make the slow valid ones look cheap.

The pool is bounded: past ``max_waiting`` tasks waiting for a thread, new requests are refused
with 429 (the same back-pressure as a full model queue) instead of piling up in memory. A task
counts until its thread is done with it, even when its caller has gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from deepserve.service.errors import QueueFullError

T = TypeVar("T")
_SMOOTHING = 0.2  # weight of the newest run in the running average


def size_kind(kind: str, nbytes: int) -> str:
    """``kind`` with its payload's size class: sizes within a factor of 16 share a measurement, so
    a small request and a large image of the same model are not averaged together."""
    return f"{kind}-{nbytes.bit_length() // 4}"


class StepCost:
    """Running average of one kind of work's duration, in seconds (written from any thread)."""

    __slots__ = ("average",)

    def __init__(self) -> None:
        self.average = float("inf")  # unknown: runs in the pool until measured

    def observe(self, seconds: float) -> None:
        previous = self.average
        self.average = seconds if previous == float("inf") else previous + _SMOOTHING * (seconds - previous)


class CodecStage:
    def __init__(self, threads: int, inline_below_s: float, max_waiting: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="codec")
        self._inline_below = inline_below_s
        self._capacity = threads + max_waiting
        self._queued = 0
        self._costs: dict[tuple[str, str, str], StepCost] = {}

    def cost(self, model: str, step: str, kind: str) -> StepCost:
        key = (model, step, kind)
        found = self._costs.get(key)
        if found is None:
            found = self._costs[key] = StepCost()
        return found

    async def run(self, cost: StepCost, fn: Callable[..., T], *args: object) -> T:
        if cost.average < self._inline_below:
            return _timed(cost, fn, *args)
        if self._queued >= self._capacity:
            raise QueueFullError(
                f"the pre/post-processing stage has {self._queued} requests in hand; retry shortly"
            )
        self._queued += 1
        loop = asyncio.get_running_loop()
        work = self._pool.submit(_timed, cost, fn, *args)

        def done(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed first (shutdown): nothing to count
                loop.call_soon_threadsafe(self._release)

        work.add_done_callback(done)
        return await asyncio.wrap_future(work)

    def _release(self) -> None:
        self._queued -= 1

    def forget(self, model: str) -> None:
        """A model unloaded (or reloaded with other code): its measurements no longer hold."""
        for key in [k for k in self._costs if k[0] == model]:
            del self._costs[key]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _timed(cost: StepCost, fn: Callable[..., T], *args: object) -> T:
    start = time.perf_counter()
    result = fn(*args)
    cost.observe(time.perf_counter() - start)
    return result
