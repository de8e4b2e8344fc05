"""How many intra-op threads a small graph really wants: one, unless timing says otherwise.

ONNX Runtime with two intra-op threads and spinning off (the server's default, so the threads do
not burn the core the event loop needs) wakes its second thread for every parallel operator. For a
graph whose operators take microseconds the wake-up costs more than the work: measured here, the
64-512-256-10 MLP ran a batch of one in 122 µs on two threads against 48 µs on one, a batch of 32
in 193 against 108 µs; digits-cnn 184 against 89 µs. ResNet-18 halves its time on two threads.

So when the thread count was not set by the operator, a CPU graph whose batch of one runs in
under ``SMALL_GRAPH_S`` is reopened with one thread. The rule is a threshold, not a race of the two
settings at load: timed side by side, a few runs of microseconds each flip with the load on the
box, while the graphs on either side of the line sit far from it (tiny MLPs and digits-cnn at
0.01-0.2 ms, ResNet-18 at 10 ms). Graphs whose inputs have free dimensions past the batch axis
(token models: MiniLM, the GPTs; one token says nothing of 128) or whose probe run fails keep the
threads they were given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

SMALL_GRAPH_S = 0.001  # a batch of one under this: one thread
PROBE_RUNS = 7
# ONNX type strings -> numpy dtypes for the inputs a deepserve graph can have (ort_runtime casts by it).
ORT_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
}


def probe_feeds(session: Any) -> dict[str, np.ndarray] | None:
    """Zeros of every input as a batch of one, or None when a batch of one says little: an input
    that is not a plain tensor, or one with a free dimension past the batch axis (a token model's
    sequence: one token is no measure of 128)."""
    feeds = {}
    for arg in session.get_inputs():
        dtype = ORT_DTYPES.get(arg.type)
        free = [i for i, d in enumerate(arg.shape) if not (isinstance(d, int) and d >= 0)]
        if dtype is None or free not in ([], [0]):
            return None
        feeds[arg.name] = np.zeros([1 if i in free else d for i, d in enumerate(arg.shape)], dtype)
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
    """(session, threads, why): ``session`` as given, or a one-thread session of the same file for a
    small graph; ``why`` is the timing behind the choice, for the load log (None: not timed)."""
    if threads <= 1:
        return session, threads, None
    feeds = probe_feeds(session)
    if feeds is None:
        return session, threads, None
    try:
        seconds = median_run_seconds(session, feeds)
    except Exception:  # inputs with constraints zeros break (a KV-cache graph): keep it as it is
        return session, threads, None
    if seconds >= SMALL_GRAPH_S:
        return session, threads, None
    why = (f"a batch of one takes {seconds * 1e3:.3f} ms, under {SMALL_GRAPH_S * 1e3:g} ms: waking a "
           f"second thread for each operator costs more than it saves")  # fmt: skip
    return make_session(1), 1, why
