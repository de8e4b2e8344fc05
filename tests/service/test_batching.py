from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from deepserve.handlers.base import InvalidInputError
from deepserve.service.batching import DynamicBatcher
from deepserve.service.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    QueueFullError,
    ShuttingDownError,
)
from deepserve.service.metrics import Metrics
from tests.service.fakes import SumHandler


def rows(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array([[v, v, v] for v in values], dtype=np.float32)}


async def _started(handler: SumHandler, **kwargs: object) -> DynamicBatcher:
    opts: dict[str, object] = {"model": "sum", "max_batch_size": 8, "max_delay": 0.0}
    opts.update(kwargs)
    batcher = DynamicBatcher(handler.predict_batch, **opts)  # type: ignore[arg-type]
    await batcher.start()
    return batcher


async def test_concurrent_submits_made_while_busy_form_one_batch(sum_handler: SumHandler) -> None:
    batcher = await _started(sum_handler)
    sum_handler.release.clear()  # the first batch blocks; the next 6 pile up behind it
    first = asyncio.create_task(batcher.submit(rows(0)))
    await asyncio.sleep(0.05)
    rest = [asyncio.create_task(batcher.submit(rows(i))) for i in range(1, 7)]
    await asyncio.sleep(0.05)
    sum_handler.release.set()
    results = await asyncio.gather(first, *rest)
    assert sum_handler.batches == [1, 6]
    assert [float(r["total"][0, 0]) for r in results] == [3.0 * i for i in range(7)]
    await batcher.stop()


async def test_batch_is_capped_at_max_rows(sum_handler: SumHandler) -> None:
    batcher = await _started(sum_handler, max_batch_size=4)
    sum_handler.release.clear()
    blocker = asyncio.create_task(batcher.submit(rows(0)))
    await asyncio.sleep(0.05)
    tasks = [asyncio.create_task(batcher.submit(rows(i, i))) for i in range(3)]  # 6 rows
    await asyncio.sleep(0.05)
    sum_handler.release.set()
    await asyncio.gather(blocker, *tasks)
    assert sum_handler.batches == [1, 2, 1]
    await batcher.stop()


async def test_lone_request_does_not_wait_for_the_delay(sum_handler: SumHandler) -> None:
    batcher = await _started(sum_handler, max_delay=0.5)
    t0 = time.monotonic()
    await batcher.submit(rows(1))
    assert time.monotonic() - t0 < 0.25
    await batcher.stop()


async def test_delay_flushes_a_partial_batch_under_load(sum_handler: SumHandler) -> None:
    batcher = await _started(sum_handler, max_delay=0.2, max_batch_size=8)
    batcher._last_batch_items = 2  # concurrent traffic seen: the owner now waits for more rows
    t0 = time.monotonic()
    a = asyncio.create_task(batcher.submit(rows(1)))
    await asyncio.sleep(0.05)
    b = asyncio.create_task(batcher.submit(rows(2)))
    await asyncio.gather(a, b)
    elapsed = time.monotonic() - t0
    assert sum_handler.batches == [2]  # joined, because the owner waited
    assert 0.15 <= elapsed < 1.0  # flushed by the delay from the oldest, not by a full batch
    await batcher.stop()


async def test_no_waiting_once_every_admitted_request_is_queued(sum_handler: SumHandler) -> None:
    """Two clients (counted as the data plane's Call counts them): once both requests are queued
    nobody else can join, so the batch runs at once instead of after the delay."""
    batcher = await _started(sum_handler, max_delay=0.5, max_batch_size=8)
    batcher._last_batch_items = 2  # concurrent traffic seen: the owner would wait for more rows
    for _ in range(2):  # two requests in flight, as the data plane's Call counts them
        batcher.arrive()
    t0 = time.monotonic()
    await asyncio.gather(batcher.submit(rows(1)), batcher.submit(rows(2)))
    assert sum_handler.batches == [2]
    assert time.monotonic() - t0 < 0.25, "waited for company that could not come"
    await batcher.stop()


async def test_preferred_size_trims_the_batch(sum_handler: SumHandler) -> None:
    batcher = await _started(sum_handler, preferred_sizes=[2, 4])
    sum_handler.release.clear()
    blocker = asyncio.create_task(batcher.submit(rows(0)))
    await asyncio.sleep(0.05)
    tasks = [asyncio.create_task(batcher.submit(rows(i))) for i in range(5)]
    await asyncio.sleep(0.05)
    sum_handler.release.set()
    await asyncio.gather(blocker, *tasks)
    assert sum_handler.batches == [1, 4, 1]
    await batcher.stop()


async def test_full_queue_answers_at_once(sum_handler: SumHandler) -> None:
    batcher = await _started(sum_handler, max_queue=2)
    sum_handler.release.clear()
    running = asyncio.create_task(batcher.submit(rows(0)))
    await asyncio.sleep(0.05)
    waiting = [asyncio.create_task(batcher.submit(rows(i))) for i in (1, 2)]
    await asyncio.sleep(0.01)
    t0 = time.monotonic()
    with pytest.raises(QueueFullError) as info:
        await batcher.submit(rows(3))
    assert time.monotonic() - t0 < 0.05
    assert info.value.retry_after >= 1 and "retry" in info.value.message
    sum_handler.release.set()
    await asyncio.gather(running, *waiting)
    await batcher.stop()


async def test_expired_request_is_answered_504_and_never_computed(sum_handler: SumHandler) -> None:
    batcher = await _started(sum_handler)
    sum_handler.release.clear()
    running = asyncio.create_task(batcher.submit(rows(0)))
    await asyncio.sleep(0.05)
    with pytest.raises(DeadlineExceededError):
        await batcher.submit(rows(5), timeout=0.05)
    sum_handler.release.set()
    await running
    await asyncio.sleep(0.05)
    assert sum_handler.batches == [1]  # the expired request never reached the model
    await batcher.stop()


async def test_hanging_model_is_cut_by_the_deadline() -> None:
    handler = SumHandler(delay=0.5)
    batcher = await _started(handler)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        await batcher.submit(rows(1), timeout=0.1)
    assert time.monotonic() - t0 < 0.4
    await batcher.stop()


async def test_poison_item_fails_only_its_own_request(sum_handler: SumHandler) -> None:
    batcher = await _started(sum_handler)
    sum_handler.release.clear()
    blocker = asyncio.create_task(batcher.submit(rows(0)))
    await asyncio.sleep(0.05)
    good1 = asyncio.create_task(batcher.submit(rows(1)))
    bad = asyncio.create_task(batcher.submit(rows(-1)))
    good2 = asyncio.create_task(batcher.submit(rows(2)))
    await asyncio.sleep(0.05)
    sum_handler.release.set()
    assert float((await good1)["total"][0, 0]) == 3.0
    assert float((await good2)["total"][0, 0]) == 6.0
    with pytest.raises(InvalidInputError, match="poison"):
        await bad
    await blocker
    assert sum_handler.batches == [1, 3, 1, 1, 1]  # failed batch of 3, then retried one by one
    await batcher.stop()


async def test_too_many_rows_is_rejected(sum_handler: SumHandler) -> None:
    batcher = await _started(sum_handler, max_batch_size=2)
    with pytest.raises(InvalidRequestError, match="at most 2"):
        await batcher.submit(rows(1, 2, 3))
    await batcher.stop()


async def test_stop_drains_queued_work_then_refuses(sum_handler: SumHandler) -> None:
    batcher = await _started(sum_handler)
    tasks = [asyncio.create_task(batcher.submit(rows(i))) for i in range(3)]
    await asyncio.sleep(0)
    await batcher.stop(drain=True)
    assert len(await asyncio.gather(*tasks)) == 3
    with pytest.raises(ShuttingDownError):
        await batcher.submit(rows(1))


async def test_metrics_and_statistics_are_recorded(sum_handler: SumHandler) -> None:
    metrics = Metrics(CollectorRegistry())
    batcher = await _started(sum_handler, metrics=metrics)
    await batcher.submit(rows(1, 2))
    await batcher.submit(rows(3))
    stats = batcher.stats.as_json()
    assert stats["inference_count"] == 3 and stats["execution_count"] == 2
    counts = {k: v["count"] for k, v in stats["inference_stats"].items()}
    assert counts["queue"] == 2 and counts["compute_infer"] == counts["compute_input"] == 2
    text = metrics.render().decode()
    assert 'deepserve_batch_size_count{model="sum"} 2.0' in text
    assert 'deepserve_queue_duration_seconds_count{model="sum"} 2.0' in text
    await batcher.stop()


async def test_inline_mode_runs_tiny_batches_on_the_loop_only_after_warmup(sum_handler: SumHandler) -> None:
    import threading

    threads: list[str] = []
    original = sum_handler.predict_batch

    def recording(items: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        threads.append(threading.current_thread().name)
        return original(items)

    batcher = DynamicBatcher(recording, model="sum", max_batch_size=8, inline_below=1.0)
    await batcher.start()
    for i in range(25):
        await batcher.submit(rows(i))
    assert all(name.startswith("model-sum") for name in threads[:20])  # warm-up in the worker thread
    assert threads[-1] == threading.current_thread().name  # then on the event loop's thread
    await batcher.stop()


async def test_inline_mode_goes_back_to_the_thread_as_soon_as_requests_batch(sum_handler: SumHandler) -> None:
    """Inline only while the model serves one request at a time: with several requests in flight
    (concurrent clients, counted as the data plane's Call counts them) the batches run in the
    worker thread, where compute overlaps the loop's HTTP work."""
    import threading

    batches: list[tuple[int, str]] = []
    original = sum_handler.predict_batch

    def recording(items: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        batches.append((len(items), threading.current_thread().name))
        return original(items)

    batcher = DynamicBatcher(recording, model="sum", max_batch_size=8, inline_below=1.0)

    async def call(i: int) -> None:
        batcher.arrive()
        try:
            await batcher.submit(rows(i))
        finally:
            batcher.leave()

    await batcher.start()
    for i in range(25):
        await call(i)
    assert batches[-1] == (1, threading.current_thread().name)  # one client: on the loop
    await asyncio.gather(*(call(i) for i in range(6)))
    later = batches[25:]
    assert sum(size for size, _ in later) == 6 and max(size for size, _ in later) > 1
    assert all(name.startswith("model-sum") for _, name in later)  # none of them inline
    await batcher.stop()


async def test_a_full_batch_waiting_is_queued_behind_the_running_one(sum_handler: SumHandler) -> None:
    """Under overload the next full batch is handed to the worker thread while the first still
    runs (it starts the moment the first ends, without waiting for the event loop); the model still
    runs one batch at a time and every caller gets its own answer."""
    import threading

    running, most = 0, 0
    guard = threading.Lock()
    original = sum_handler.predict_batch

    def counting(items: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        try:
            return original(items)
        finally:
            with guard:
                running -= 1

    batcher = DynamicBatcher(counting, model="sum", max_batch_size=4)
    sum_handler.release.clear()
    tasks = [asyncio.create_task(batcher.submit(rows(i))) for i in range(10)]
    await batcher.start()  # all ten are queued when the owner first looks
    await asyncio.sleep(0.05)
    assert len(batcher._queue) == 2  # 4 running, the next 4 already in the thread, 2 wait
    sum_handler.release.set()
    results = await asyncio.gather(*tasks)
    assert [float(r["total"][0, 0]) for r in results] == [3.0 * i for i in range(10)]
    assert sum_handler.batches == [4, 4, 2]
    assert most == 1
    await batcher.stop()


async def test_a_partial_batch_is_not_cut_early(sum_handler: SumHandler) -> None:
    """Fewer requests than a batch waiting: they are not cut while the model is busy, so the ones
    that arrive before it is free still join them."""
    batcher = await _started(sum_handler, max_batch_size=8)
    sum_handler.release.clear()
    first = asyncio.create_task(batcher.submit(rows(0)))
    await asyncio.sleep(0.05)
    early = [asyncio.create_task(batcher.submit(rows(i))) for i in range(1, 4)]
    await asyncio.sleep(0.05)
    assert len(batcher._queue) == 3
    late = [asyncio.create_task(batcher.submit(rows(i))) for i in range(4, 7)]
    await asyncio.sleep(0.05)
    sum_handler.release.set()
    await asyncio.gather(first, *early, *late)
    assert sum_handler.batches == [1, 6]
    await batcher.stop()
