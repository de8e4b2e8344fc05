"""How many intra-op threads a small graph really wants: one, unless timing says otherwise.

ONNX Runtime with two intra-op threads and spinning off (the server's default, so the threads do
not burn the core the event loop needs) wakes its second thread for every parallel operator. For a
graph whose operators take microseconds the wake-up costs more than the work: measured here, the
64-512-256-10 MLP ran a batch of one in 122 µs on two threads against 48 µs on one, a batch of 32
in 193 against 108 µs; digits-cnn 184 against 89 µs. ResNet-18 halves its time on two threads.

So when the thread count was not set by the operator, a CPU session whose batch of one runs in
under ``CALIBRATE_UNDER_S`` is timed against a one-thread session of the same file, and the faster
is kept. Big graphs are never loaded twice; a graph whose inputs cannot be guessed (a probe run that
fails) keeps the threads it was given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

CALIBRATE_UNDER_S = 0.005  # a batch of one slower than this is big enough to use every thread
PROBE_RUNS = 7
_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
}


def probe_feeds(session: Any) -> dict[str, np.ndarray] | None:
    """Zeros of every input with each free dimension set to 1 (a batch of one), or None when an
    input's type is not a plain tensor."""
    feeds = {}
    for arg in session.get_inputs():
        dtype = _DTYPES.get(arg.type)
        if dtype is None:
            return None
        shape = [d if isinstance(d, int) and d >= 0 else 1 for d in arg.shape]
        feeds[arg.name] = np.zeros(shape, dtype)
    return feeds


def median_run_seconds(session: Any, feeds: dict[str, np.ndarray], runs: int = PROBE_RUNS) -> float:
    """The median of ``runs`` timed runs after two untimed ones (first-run allocations)."""
    for _ in range(2):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def fewer_threads_if_faster(
    session: Any, threads: int, make_session: Callable[[int], Any]
) -> tuple[Any, int, str | None]:
    """(session, threads, why): ``session`` as given, or a one-thread session when that runs the
    probe faster; ``why`` is the timing behind the choice, for the load log (None: not timed)."""
    if threads <= 1:
        return session, threads, None
    feeds = probe_feeds(session)
    if feeds is None:
        return session, threads, None
    try:
        many = median_run_seconds(session, feeds)
    except Exception:  # inputs with constraints zeros break (a KV-cache graph): keep it as it is
        return session, threads, None
    if many >= CALIBRATE_UNDER_S:
        return session, threads, None
    single = make_session(1)
    one = median_run_seconds(single, feeds)
    why = f"a batch of one took {one * 1e3:.3f} ms on 1 thread, {many * 1e3:.3f} ms on {threads}"
    return (single, 1, why) if one <= many else (session, threads, why)
