"""The generation engine's courier: one thread that wakes the event loops with the chunks a step made.

Waking a loop (its self-pipe write) releases the GIL, and the worker thread would wait for it; the
courier does it while the worker is inside the model call (no GIL held).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from typing import Any

_HANDOFF_S = 0.002  # longest a decode step waits for the loop to take its chunks (Courier.send)


# (request, chunk or exception) in the order made; a request has .loop, .queue and .cancelled
Outbox = list[tuple[Any, Any]]


class Courier:
    """Wakes the event loops for the worker. Waking one (its self-pipe write) releases the GIL, the loop
    takes it to run its consumers and the worker waited: 40% of its wall time at 16 streams (cProfile).
    A ``SimpleQueue.put`` switches no GIL; the courier wakes loops while the worker is inside the model
    call (no GIL held). One FIFO, one thread: chunks keep their order."""

    def __init__(self, name: str) -> None:
        self._inbox: queue.SimpleQueue[tuple[Outbox, threading.Event] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def send(self, out: Outbox) -> None:
        """Queue ``out`` and wait (at most ``_HANDOFF_S``) until its loop has run the consumers it woke.
        Without the wait a tiny model's worker re-took the free GIL after each model call and starved
        the courier and the loop until the 5 ms switch interval: a whole 16-token stream left in one
        burst (ITL p50 0.01 ms). Waiting hands the GIL over once per step (tokens every ~0.2 ms)."""
        ack = threading.Event()
        self._inbox.put((out, ack))
        ack.wait(_HANDOFF_S)

    def close(self) -> None:
        """Deliver what was sent, then end the thread."""
        self._inbox.put(None)
        self._thread.join()

    def _run(self) -> None:
        done = False
        while not done:
            batch = self._inbox.get()
            done = batch is None
            out: Outbox = list(batch[0]) if batch else []
            acks = [batch[1]] if batch else []
            while not done and not self._inbox.empty():  # what piled up goes in the same wake-up
                more = self._inbox.get()
                done = more is None
                if more is not None:
                    out.extend(more[0])
                    acks.append(more[1])
            _wake(out, acks)


def _wake(out: Outbox, acks: list[threading.Event]) -> None:
    """One wake-up per event loop for all of ``out``; chunks of cancelled requests are dropped.
    ``acks`` are set once the consumers have run (or at once when no loop is listening)."""
    by_loop: dict[asyncio.AbstractEventLoop, Outbox] = {}
    for request, item in out:
        if not request.cancelled:
            by_loop.setdefault(request.loop, []).append((request, item))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is listening any more
            loop.call_soon_threadsafe(_put_all, items, acks)
    if not by_loop:
        _set_all(acks)


def _put_all(items: Outbox, acks: list[threading.Event]) -> None:
    for request, item in items:
        request.queue.put_nowait(item)
    # call_soon: runs after the consumer tasks the puts just woke, so their writes are done first
    asyncio.get_running_loop().call_soon(_set_all, acks)


def _set_all(acks: list[threading.Event]) -> None:
    for ack in acks:
        ack.set()
