"""Dynamic batching: one owner task per model drains a bounded queue into batches.

Batch cut rules, checked in this order:
- requests whose deadline passed (or whose caller left) are answered / dropped, never computed;
- rows (``item_rows``) stop at ``max_batch_size``; text items are grouped by length: the batch
  is padded to its longest item, so a later request joins only while rows x longest length stays
  within ``max_tokens`` and at least ``min_fill`` of that padded area is real tokens. A request that
  does not fit is skipped, not dropped: it keeps its place, and the oldest live request always
  starts the next batch (FIFO fairness: nobody waits behind more than its queue position);
- with ``preferred_sizes`` the batch is trimmed to the largest preferred size it covers.

When to wait (the adaptive choice): the owner runs one batch at a time in a single worker
thread, so requests that arrive while the model computes pile up and form the next batch on
their own. Waiting ``max_delay`` on top only helps under concurrent load, so the owner waits
(counted from the OLDEST waiting request) only when the previous batch held more than one
request, and only while some request admitted to the model is still decoding: a lone client never
pays the delay, N clients make batches of N at once, and a busy model still fills its batches.

Where a batch runs: in one worker thread per model (ONNX Runtime / torch release the GIL, so
compute overlaps the event loop's HTTP work on the other core, and one thread keeps a model's
intra-op threads from being oversubscribed). The hand-off costs ~0.1 ms both ways, which is most
of a tiny model's request at one client, so a proven-tiny model (batches under ``inline_below``)
that serves one request at a time runs on the event loop instead (see ``_runs_inline``).

One batch ahead: when a full batch is already waiting as a batch starts, the owner cuts it at once
and queues it in the worker thread behind the running one, which starts it the moment the first
ends. Under overload the event loop is hundreds of callbacks deep, and waiting for it to take a
finished batch's result before cutting the next left the model idle most of the time (digits-cnn
at 320 clients: 6.6 ms per batch of 32 against 1.5 ms of compute). A full batch cannot grow by
waiting, so cutting it early costs nothing; its deadlines were checked at the cut, one batch's time
before it runs.

A batch that raises is retried item by item, so one poison input fails only its caller.

Traced requests (``service.tracing``) get a ``queue wait`` span (from ``submit`` to the start of
their batch, or to their end when they never ran) and a ``batch execution`` span per run of their
batch: a batch serves requests of several traces, so each gets a span of its own with the batch's
id, rows and requests as attributes (a retry alone is another run).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from deepserve.handlers.base import BatchSizeMismatchError, Tensors
from deepserve.service import tracing
from deepserve.service.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    QueueFullError,
    ShuttingDownError,
)
from deepserve.service.metrics import Metrics
from deepserve.service.stats import ModelStatistics

log = logging.getLogger(__name__)

_WARMUP = 20  # executions in the worker thread before a model may run inline
PredictBatch = Callable[[list[Tensors]], list[Tensors]]


@dataclass(eq=False)
class _Pending:
    item: Tensors
    rows: int
    cost: int
    future: asyncio.Future[Tensors]
    enqueued: float
    deadline: float
    seq: int  # arrival order, to put skipped requests back where they were
    length: float  # padded tokens per row (item_cost / item_rows); 1 for non-text items
    trace: tracing.Waiting | None = None  # traced requests only


_Ran = tuple[list[Tensors], int, int]  # outputs, and the run's start and end (perf_counter_ns)


@dataclass(eq=False)
class _Running:
    """A batch handed to the model, not yet answered."""

    batch: list[_Pending]
    started: asyncio.Future[_Ran]
    traced_from: int  # time_ns its traced requests' queue waits ended; 0 untraced


def _rows(item: Tensors) -> int:
    first = next(iter(item.values()))
    return int(first.shape[0]) if first.ndim else 1


class DynamicBatcher:
    def __init__(
        self,
        predict_batch: PredictBatch,
        *,
        model: str,
        max_batch_size: int,
        max_delay: float = 0.0,
        preferred_sizes: list[int] | None = None,
        max_queue: int = 256,
        max_tokens: int | None = None,
        item_rows: Callable[[Tensors], int] = _rows,
        item_cost: Callable[[Tensors], int] | None = None,
        min_fill: float = 0.75,
        default_timeout: float = 30.0,
        inline_below: float = 0.0,
        metrics: Metrics | None = None,
        stats: ModelStatistics | None = None,
    ) -> None:
        self._predict_batch = predict_batch
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self._preferred = sorted(s for s in (preferred_sizes or []) if s <= max_batch_size)
        self._wait_target = self._preferred[-1] if self._preferred else max_batch_size
        self.max_queue = max_queue
        self._max_tokens = max_tokens
        self._item_rows = item_rows
        self._item_cost = item_cost or item_rows
        self._min_fill = min_fill
        self._arrivals = itertools.count()
        self.default_timeout = default_timeout
        self.stats = stats or ModelStatistics(model, "1")
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._owner: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{model}")
        self._last_batch_items = 0
        self._current: list[_Pending] = []
        self._avg_batch_s = 0.01  # a batch's wall time, hand-off included (Retry-After)
        self._avg_run_s = 0.01  # the model's own time per batch (the inline choice)
        self._inline_below = inline_below
        # label children resolved once: .labels() takes a lock and builds a key per call
        self._m_queue = metrics.queue_duration.labels(model) if metrics else None
        self._m_compute = metrics.compute_duration.labels(model) if metrics else None
        self._m_batch = metrics.batch_size.labels(model) if metrics else None
        self._m_depth = metrics.queue_depth.labels(model) if metrics else None
        self._executions = 0
        # requests to this model admitted and not yet answered, counted by the data plane's Call
        # (decoding, queued, computing or encoding): 1 means the model serves one client right now
        self.callers = 0
        self._span_model: dict[str, str | int | bool] = {"deepserve.model": model}  # traces only
        self._batch_ids = 0

    @property
    def preferred_sizes(self) -> list[int]:
        return list(self._preferred)

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._owner is None:
            self._owner = asyncio.create_task(self._run_forever(), name=f"batcher-{self.model}")

    async def stop(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop taking requests; with ``drain`` finish the queued ones within ``timeout``."""
        self._closing = True
        self._wakeup.set()
        if self._owner is not None:
            if not drain:
                self._fail_all(ShuttingDownError(f"model {self.model!r} is unloading; retry elsewhere"))
            try:
                await asyncio.wait_for(asyncio.shield(self._owner), timeout)
            except TimeoutError:
                self._owner.cancel()
                self._fail_all(ShuttingDownError(f"model {self.model!r} stopped before this request ran"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the caller's side -----------------------------------------------------------------------
    def admit(self) -> None:
        """Refuse now what ``submit`` would refuse for a closing model or a full queue.

        Transports call it before reading or decoding a body, so an overloaded server sheds a
        request for the price of a length check instead of a JSON parse or a tokenization.
        """
        if self._closing:
            raise ShuttingDownError(f"model {self.model!r} is shutting down; retry on another replica")
        if len(self._queue) >= self.max_queue:
            raise QueueFullError(
                f"model {self.model!r} has {len(self._queue)} requests waiting (the limit); retry later",
                retry_after=self._retry_after(),
            )

    def arrive(self) -> None:
        """``admit``, then count the request as in flight until ``leave`` (the data plane's Call
        does both, around the whole request: decoding, queue, compute, encoding)."""
        self.admit()
        self.callers += 1

    def leave(self) -> None:
        self.callers -= 1

    async def submit(self, item: Tensors, *, timeout: float | None = None) -> Tensors:
        """Queue one item and wait for its outputs; raises a typed error on any refusal."""
        self.admit()  # again: the queue may have filled while this request was decoded
        rows = self._item_rows(item)
        if rows > self.max_batch_size:
            raise InvalidRequestError(
                f"request has {rows} rows but model {self.model!r} takes at most {self.max_batch_size}"
                " per request; split it into smaller requests"
            )
        timeout = self.default_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Tensors] = loop.create_future()
        now = time.monotonic()
        cost = self._item_cost(item)
        length = cost / max(rows, 1)
        arrival = next(self._arrivals)
        trace = tracing.waiting() if tracing.active else None
        pending = _Pending(item, rows, cost, future, now, now + timeout, arrival, length, trace)
        if not self._current and self._runs_inline():
            # one step first: requests that arrived with this one (their tasks are ready, not yet
            # counted) reach the model, and then it is not alone. An inline request never yields
            # again, so without this step a loaded server would look idle to every request.
            await asyncio.sleep(0)
            if not self._current and self._runs_inline():
                # idle, one client, a proven-tiny graph: run it now, without the two hops through
                # the owner task (its wake-up, then ours) that a queued request takes
                await self._finish(self._launch([pending]))  # inline: does not suspend
                return future.result()
        self._queue.append(pending)
        self._queued_rows += rows
        self._set_depth()
        self._wakeup.set()
        # one timer instead of asyncio.wait_for (which costs a task per request on the hot path)
        timer = loop.call_later(timeout, self._deadline_passed, future, timeout)
        try:
            return await future
        finally:
            timer.cancel()
            if trace is not None and not trace.ran:  # left before its batch started: deadline, disconnect
                tracing.record("queue wait", trace.parent, trace.since_ns, time.time_ns(), self._span_model,
                               future.exception() if future.done() and not future.cancelled() else None)

    def _deadline_passed(self, future: asyncio.Future[Tensors], timeout: float) -> None:
        if not future.done():
            future.set_exception(DeadlineExceededError(
                f"request to {self.model!r} passed its {timeout:g} s deadline (queued work is never computed"
                " late); retry, or raise the timeout"
            ))  # fmt: skip

    def _retry_after(self) -> float:
        batches = math.ceil(len(self._queue) / max(1, self.max_batch_size))
        return max(1.0, batches * self._avg_batch_s)

    # -- the owner's side ------------------------------------------------------------------------
    async def _run_forever(self) -> None:
        ahead: _Running | None = None  # the next batch, already queued in the worker thread
        while True:
            if ahead is None:
                while not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                await self._gather()
                batch = self._cut()
                if not batch:
                    continue
                running = self._launch(batch)
            else:
                running, ahead = ahead, None
            if self._queued_rows >= self._wait_target:  # a full batch waits: queue it behind this one
                after = self._cut()
                ahead = self._launch(after) if after else None
            await self._finish(running)

    async def _gather(self) -> None:  # up to max_delay from the oldest request (module doc)
        if self.max_delay <= 0 or self._last_batch_items <= 1 or self._closing:
            return
        limit = self._queue[0].enqueued + self.max_delay
        while self._queued_rows < self._wait_target and not self._closing and self._more_may_come():
            remaining = limit - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _more_may_come(self) -> bool:
        """Whether a request admitted to this model is still on its way to the queue (decoding).
        When every one is already queued, waiting longer only adds latency: eight clients make
        batches of eight at once, not after the delay. ``callers`` is 0 when nobody counts them
        (a batcher driven directly): then the delay is waited as configured."""
        return self.callers == 0 or len(self._queue) < self.callers

    def _cut(self) -> list[_Pending]:
        """The next batch: FIFO from the oldest live request, later ones joining when they fit
        (``_fits``); skipped and trimmed requests go back in arrival order. Scans at most four
        batches' worth of requests, so a cut stays O(batch) however long the queue is."""
        batch: list[_Pending] = []
        returned: list[_Pending] = []
        rows, longest, real = 0, 0.0, 0
        now = time.monotonic()
        budget = 4 * self.max_batch_size
        while self._queue and budget > 0 and rows < self.max_batch_size:
            head = self._queue[0]
            if head.future.done() or now > head.deadline:
                self._pop()
                self._deadline_passed(head.future, head.deadline - head.enqueued)
                continue
            budget -= 1
            if not batch or self._fits(rows + head.rows, max(longest, head.length), real + head.cost):
                batch.append(self._pop())
                rows, longest, real = rows + head.rows, max(longest, head.length), real + head.cost
            elif rows + head.rows > self.max_batch_size:
                break  # full: keep strict order for requests that only lack room
            else:
                returned.append(self._pop())  # another length: it heads a later batch
        keep = self._preferred_prefix(batch)
        returned += batch[keep:]
        for pending in sorted(returned, key=lambda p: p.seq, reverse=True):
            self._queue.appendleft(pending)
            self._queued_rows += pending.rows
        self._set_depth()
        return batch[:keep]

    def _fits(self, rows: int, longest: float, real: int) -> bool:
        """Would a batch of ``rows`` padded to ``longest``, ``real`` tokens unpadded, be allowed:
        rows, the token budget, and the padded fill (module docstring)."""
        if rows > self.max_batch_size:
            return False
        padded = rows * longest  # every row is padded to the batch's longest item
        if self._max_tokens is not None and padded > self._max_tokens:
            return False
        return real >= self._min_fill * padded

    def _preferred_prefix(self, batch: list[_Pending]) -> int:
        """Length of the longest prefix whose rows are a preferred size (all, if none matches)."""
        totals = list(itertools.accumulate(p.rows for p in batch))
        hits = [i + 1 for i, total in enumerate(totals) if total in self._preferred]
        return hits[-1] if hits else len(batch)

    def _pop(self) -> _Pending:
        pending = self._queue.popleft()
        self._queued_rows -= pending.rows
        return pending

    def _launch(self, batch: list[_Pending]) -> _Running:
        """Hand ``batch`` to the model (its queue wait ends here) without waiting for the result."""
        started = time.monotonic()
        for pending in batch:
            waited = started - pending.enqueued
            self.stats.durations["queue"].add(int(waited * 1e9))
            if self._m_queue is not None:
                self._m_queue.observe(waited)
        traced_from = self._trace_waits(batch) if tracing.active else 0
        self._last_batch_items = len(batch)
        alone = not self._current
        self._current = self._current + batch
        return _Running(batch, self._start([p.item for p in batch], may_inline=alone), traced_from)

    async def _finish(self, running: _Running) -> None:
        """Wait for a launched batch and answer its requests (item by item if the batch raised)."""
        try:
            await self._answer(running)
        finally:
            self._current = self._current[len(running.batch) :]  # batches finish in launch order

    async def _answer(self, running: _Running) -> None:
        batch, traced_from = running.batch, running.traced_from
        try:
            outputs = await self._collect(running.started, len(batch), sum(p.rows for p in batch))
        except Exception as exc:
            if traced_from:
                self._trace_run(batch, traced_from, exc)
            if len(batch) == 1:
                self._resolve(batch[0], exc)
                return
            log.warning("batch of %d failed on %s (%s); retrying item by item", len(batch), self.model, exc)
            await self._retry_alone(batch)
            return
        if traced_from:
            self._trace_run(batch, traced_from, None)
        for pending, out in zip(batch, outputs, strict=True):
            self._resolve(pending, out)

    async def _retry_alone(self, batch: list[_Pending]) -> None:
        for pending in batch:
            traced_from = time.time_ns() if tracing.active else 0
            try:
                (out,) = await self._compute([pending.item], pending.rows)
            except Exception as item_exc:
                if traced_from:
                    self._trace_run([pending], traced_from, item_exc, retry=True)
                self._resolve(pending, item_exc)
            else:
                if traced_from:
                    self._trace_run([pending], traced_from, None, retry=True)
                self._resolve(pending, out)

    async def _compute(self, items: list[Tensors], rows: int) -> list[Tensors]:
        return await self._collect(self._start(items, may_inline=False), len(items), rows)

    def _start(self, items: list[Tensors], *, may_inline: bool) -> asyncio.Future[_Ran]:
        """The model's run of ``items``: on the event loop when nothing else is in flight and
        ``_runs_inline`` (done on return), else queued in the worker thread (behind the batch
        running there, if any: one model run at a time either way)."""
        if not (may_inline and self._runs_inline()):
            return asyncio.get_running_loop().run_in_executor(self._executor, self._timed_predict, items)
        done: asyncio.Future[_Ran] = asyncio.get_running_loop().create_future()
        try:
            done.set_result(self._timed_predict(items))
        except Exception as exc:
            done.set_exception(exc)
        return done

    async def _collect(self, started: asyncio.Future[_Ran], count: int, rows: int) -> list[Tensors]:
        outputs, run_from, run_to = await started  # does not suspend when it ran inline
        # from the start of this batch's own run: waiting behind the batch ahead is not its compute,
        # the hand-back to the loop is (a request pays it)
        elapsed = time.perf_counter_ns() - run_from
        # the inline choice judges the model's own time: the hand-off is what inline saves, and it
        # costs far more under grpc.aio (~0.35 ms) than under uvicorn (~0.1 ms)
        self._avg_run_s = 0.8 * self._avg_run_s + 0.2 * (run_to - run_from) / 1e9
        self._executions += 1
        if len(outputs) != count:
            raise BatchSizeMismatchError(f"{self.model}: {count} items in, {len(outputs)} results out")
        self.stats.record_execution(rows, elapsed)
        self._avg_batch_s = 0.8 * self._avg_batch_s + 0.2 * elapsed / 1e9
        if self._m_compute is not None and self._m_batch is not None:
            self._m_compute.observe(elapsed / 1e9)
            self._m_batch.observe(rows)
        return outputs

    def _timed_predict(self, items: list[Tensors]) -> _Ran:
        """``predict_batch`` with when it ran (``perf_counter_ns``: no hand-off in it)."""
        t0 = time.perf_counter_ns()
        outputs = self._predict_batch(items)
        return outputs, t0, time.perf_counter_ns()

    def _trace_waits(self, batch: list[_Pending]) -> int:
        """Ends the queue waits of the batch's traced requests; the batch's start (time_ns)."""
        now = time.time_ns()
        for pending in batch:
            trace = pending.trace
            if trace is not None and not trace.ran:
                trace.ran = True
                tracing.record("queue wait", trace.parent, trace.since_ns, now, self._span_model)
        return now

    def _trace_run(
        self, batch: list[_Pending], since_ns: int, error: BaseException | None, retry: bool = False
    ) -> None:
        now, self._batch_ids = time.time_ns(), self._batch_ids + 1
        attributes: dict[str, str | int | bool] = {
            **self._span_model, "deepserve.batch.id": self._batch_ids, "deepserve.batch.retry": retry,
            "deepserve.batch.rows": sum(p.rows for p in batch), "deepserve.batch.requests": len(batch),
        }  # fmt: skip
        for pending in batch:
            if pending.trace is not None:
                tracing.record("batch execution", pending.trace.parent, since_ns, now, attributes, error)

    def _runs_inline(self) -> bool:
        """Inline only while the model serves one request at a time: it saves the thread hand-off
        (tiny MLP p50 0.30 vs 0.35-0.45 ms at 1 client), but under load inline lost (2,000 vs
        3,400+ req/s at 32 clients: compute no longer overlaps HTTP work on the other core), so a
        second request in flight sends the model back to its thread at once. An inline batch cannot
        be cut by its deadline, so only proven-tiny built-in graphs qualify (the registry never
        passes ``inline_below`` for user code).
        """
        return (
            self._inline_below > 0
            and self.callers <= 1
            and not self._queue
            and self._executions >= _WARMUP
            and self._avg_run_s < self._inline_below
        )

    @staticmethod
    def _resolve(pending: _Pending, result: Tensors | BaseException) -> None:
        if pending.future.done():  # the caller gave up (deadline or disconnect)
            return
        if isinstance(result, BaseException):
            pending.future.set_exception(result)
        else:
            pending.future.set_result(result)

    def _fail_all(self, error: Exception) -> None:
        for pending in self._current:
            self._resolve(pending, error)
        while self._queue:
            pending = self._pop()
            if not pending.future.done():
                pending.future.set_exception(error)
        self._set_depth()

    def _set_depth(self) -> None:
        if self._m_depth is not None:
            self._m_depth.set(len(self._queue))
