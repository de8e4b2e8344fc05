"""Continuous batching for text generation: one cached decode step for every running sequence.

One worker thread owns the model loop (the event loop only enqueues requests and relays chunks;
a courier thread wakes the event loops, so the worker never waits on the GIL for them):

    every step:  drop cancelled sequences -> admit waiting ones (prefill each prompt alone, sample its
                 first token: time to first token = queue wait + one prefill) -> ONE decode over all
                 running sequences -> sample, stream, and drop the finished ones at once

KV cache: one shared, left-padded batch cache ``(L, B, H, W, Dh)``. Row i's tokens fill its last
``len_i`` columns, so every decode appends one column to all rows and the graph's ``present`` is
the next step's ``past`` with no copy in Python; ``attention_mask`` hides the padding and
``position_ids`` are per row. A join pads the narrower side; a leave drops rows and trims the width
to the longest row left (invariant: W = longest row). Chosen over per-sequence caches packed each
step because packing copies the whole cache every token; here copies happen only on joins/leaves.

Prompts are prefilled one at a time (no padding), so a sequence's prefix is computed exactly as if
it ran alone, and each sequence samples from its own seeded generator: a fixed seed gives the same
text whatever the batch companions. Prefill is compute-bound on CPU: one padded batch of 16 prompts
took 18% longer than 16 single prefills, and would hold every first token until the whole batch ends.
Traced requests get spans (``service.tracing``): ``queue wait`` to their prefill, ``time to first token``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import numpy as np

from deepserve.handlers.base import InvalidInputError
from deepserve.handlers.generation import TextGenerationHandler
from deepserve.handlers.tokenizer import ByteStream, TextStream
from deepserve.service import tracing
from deepserve.service.errors import (
    InvalidRequestError,
    ModelNotReadyError,
    QueueFullError,
    ShuttingDownError,
)
from deepserve.service.kv_cache import BatchCache
from deepserve.service.metrics import Metrics
from deepserve.service.sampling import SamplingParams, TokenLogprob, next_tokens

__all__ = ["GenerationChunk", "GenerationEngine", "SamplingParams"]  # SamplingParams: from sampling.py
log = logging.getLogger(__name__)
_HANDOFF_S = 0.002  # longest a decode step waits for the loop to take its chunks (_Courier.send)


@dataclass(frozen=True)
class GenerationChunk:
    choice: int
    text: str
    token_ids: list[int]  # tokens generated since the previous chunk of this choice (sum = completion tokens)
    finish_reason: str | None  # "stop" | "length" on the last chunk of a choice
    logprobs: list[TokenLogprob] | None = None  # one per token in token_ids, when the request asked


class _TextStream:
    """Tokens -> text safe to show: never half a character (the model's tokenizer stream holds partial
    ones back), never the start of a stop string."""

    def __init__(self, stop: tuple[str, ...], decoder: TextStream | None = None) -> None:
        self._decoder = decoder if decoder is not None else ByteStream()
        self._stop = tuple(s for s in stop if s)
        self._held = ""

    def push(self, token: int) -> tuple[str, bool]:
        """Text now safe to emit, and whether a stop string ended the choice (its text is dropped)."""
        self._held += self._decoder.push(token)
        if not self._stop:
            text, self._held = self._held, ""
            return text, False
        found = [i for i in (self._held.find(s) for s in self._stop) if i >= 0]
        if found:
            text, self._held = self._held[: min(found)], ""
            return text, True
        keep = self._stop_prefix_len()
        text, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        return text, False

    def _stop_prefix_len(self) -> int:
        """Length of the longest tail of the held text that could still grow into a stop string."""
        for k in range(min(len(self._held), max((len(s) for s in self._stop), default=1) - 1), 0, -1):
            tail = self._held[-k:]
            if any(s.startswith(tail) for s in self._stop):
                return k
        return 0

    def flush(self) -> str:
        text, self._held = self._held + self._decoder.flush(), ""
        return text


@dataclass(eq=False)
class _Request:
    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    arrival: float
    queue: asyncio.Queue[GenerationChunk | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    trace: tracing.Waiting | None = None  # traced requests only


@dataclass(eq=False)
class _Sequence:
    request: _Request
    choice: int
    rng: np.random.Generator
    text: _TextStream
    length: int = 0  # tokens in the KV cache (= position of next_token)
    next_token: int = 0  # sampled, not yet fed to the model
    generated: int = 0
    pending: list[int] = field(default_factory=list)  # token ids not yet sent in a chunk
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)  # theirs, when asked for
    counts: dict[int, int] = field(default_factory=dict)  # generated token -> times (the penalties)
    last_time: float = 0.0
    finished: bool = False


Outbox = list[tuple[_Request, GenerationChunk | BaseException]]


class GenerationEngine:
    """Continuous-batching scheduler over one TextGenerationHandler (see the module docstring)."""

    def __init__(
        self,
        handler: TextGenerationHandler,
        metrics: Metrics,
        model: str,
        *,
        max_running: int = 16,
        max_waiting: int = 64,
        max_tokens_per_step: int = 2048,
    ) -> None:
        self.handler, self.metrics, self.model = handler, metrics, model
        self.max_running, self.max_waiting = max_running, max_waiting
        self.max_tokens_per_step = max_tokens_per_step
        self._cond = threading.Condition()  # guards _waiting, _waiting_count, _stopping
        self._waiting: deque[_Request] = deque()
        self._waiting_count = 0
        self._rows: list[_Sequence] = []  # worker-owned, in cache row order
        self._cache = BatchCache()
        self._thread: threading.Thread | None = None
        self._courier: _Courier | None = None
        self._accepting = False
        self._stopping = False
        self._m = {
            name: getattr(metrics, name).labels(model=model)
            for name in ("prompt_tokens", "generated_tokens", "time_to_first_token", "inter_token_latency",
                         "running_sequences", "waiting_sequences", "kv_cache_bytes")
        }  # fmt: skip

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return self._waiting_count

    def encode(self, prompt: str) -> list[int]:
        """The prompt in the model's tokens: callers tokenize once (off the event loop when that
        is slow) and pass the ids to ``generate``."""
        return self.handler.encode(prompt)

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._thread is not None:
            return
        self._accepting, self._stopping = True, False
        self._courier = _Courier(f"generation-{self.model}-courier")
        self._thread = threading.Thread(target=self._work, name=f"generation-{self.model}", daemon=True)
        self._thread.start()

    async def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting; with ``drain`` let running and waiting sequences finish (for at most
        ``timeout`` seconds), then end the rest with ShuttingDownError."""
        self._accepting = False
        deadline = None if timeout is None else time.monotonic() + timeout
        while drain and (self.running or self.waiting) and self._thread is not None:
            if deadline is not None and time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.01)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._courier is not None:
            await asyncio.to_thread(self._courier.close)
            self._courier = None

    # -- the public call -------------------------------------------------------------------------
    async def generate(
        self, prompt: str | list[int], params: SamplingParams
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Chunks of all ``params.n`` choices as they are made; raises before the first one on errors.
        ``prompt``: text, or its token ids from ``encode``."""
        request = self._submit(prompt, params)
        left = params.n
        try:
            while left:
                item = await request.queue.get()
                if isinstance(item, BaseException):
                    left = 0
                    raise item
                left -= item.finish_reason is not None
                yield item
        finally:
            if left:  # the consumer went away (disconnect / cancel): free the slot at the next step
                self._cancel(request)

    def _submit(self, prompt: str | list[int], params: SamplingParams) -> _Request:
        if not self._accepting:
            cls = ModelNotReadyError if self._thread is None and not self._stopping else ShuttingDownError
            raise cls(f"model {self.model!r} is not accepting requests (engine not running); retry")
        params.check(self.handler.vocab_size)
        if params.n > self.max_running:
            raise InvalidRequestError(f"n={params.n} exceeds this model's max_running ({self.max_running})")
        ids = self.handler.encode(prompt) if isinstance(prompt, str) else list(prompt)
        try:
            self.handler.check_prompt(ids)
            params.check_context(len(ids), self.handler.context_length)
        except InvalidInputError as exc:
            raise InvalidRequestError(str(exc)) from None
        trace = tracing.waiting() if tracing.active else None
        request = _Request(ids, params, asyncio.get_running_loop(), time.perf_counter(), trace=trace)
        with self._cond:
            if self._waiting_count + params.n > self.max_waiting:
                raise QueueFullError(
                    f"model {self.model!r} has {self._waiting_count} sequences waiting "
                    f"(max {self.max_waiting}); retry after a second or lower n",
                    retry_after=1.0,
                )
            self._waiting.append(request)
            self._waiting_count += params.n
            self._cond.notify()
        self._m["waiting_sequences"].set(self._waiting_count)
        return request

    def _cancel(self, request: _Request) -> None:
        request.cancelled = True
        with self._cond:
            if request in self._waiting:
                self._waiting.remove(request)
                self._waiting_count -= request.params.n
        self._m["waiting_sequences"].set(self._waiting_count)

    # -- the worker thread -----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._waiting or self._rows):
                    self._cond.wait()
                if self._stopping:
                    break
            self._step()
        self._fail_everything(ShuttingDownError(f"model {self.model!r} is shutting down; retry elsewhere"))

    def _step(self) -> None:
        if any(s.request.cancelled for s in self._rows):
            self._keep([s for s in self._rows if not s.request.cancelled])
        self._admit()
        if self._rows:
            out: Outbox = []
            try:
                self._decode(out)
            except Exception as exc:  # a runtime failure fails the batch it hit, not the engine
                log.exception("decode step of %s failed", self.model)
                out.extend((r, exc) for r in {s.request: None for s in self._rows})
                self._keep([])
            self._deliver(out)
        self._m["running_sequences"].set(len(self._rows))
        self._m["waiting_sequences"].set(self._waiting_count)
        self._m["kv_cache_bytes"].set(self._cache.nbytes)

    def _admit(self) -> None:
        """Prefill waiting requests while there are free rows and the step's token budget allows;
        each request's first token goes out right after its own prefill."""
        budget, admitted = self.max_tokens_per_step - len(self._rows), 0
        while True:
            with self._cond:
                if not self._waiting:
                    return
                request = self._waiting[0]
                cost, n = len(request.prompt), request.params.n
                full = len(self._rows) + n > self.max_running or (admitted and cost > budget)
                if full and not request.cancelled:
                    return
                self._waiting.popleft()
                self._waiting_count -= n
            if request.cancelled:
                continue
            budget, admitted = budget - cost, admitted + 1
            out: Outbox = []
            try:
                self._prefill(request, out)
            except Exception as exc:  # this prompt's failure is its own
                log.exception("prefill of a %s request failed", self.model)
                out.append((request, exc))
            self._deliver(out)

    def _prefill(self, request: _Request, out: Outbox) -> None:
        params, prompt = request.params, request.prompt
        if request.trace is not None:
            tracing.record_since(request.trace, "queue wait", {"deepserve.model": self.model})
        key, value = self.handler.empty_cache(1)
        t = len(prompt)
        positions = np.arange(t, dtype=np.int64)[None]  # (1, T)
        logits, key, value = self.handler.step(
            np.array([prompt], np.int64), positions, np.ones((1, t), np.int64), key, value
        )
        self._m["prompt_tokens"].inc(t)
        seeds = [None if params.seed is None else [params.seed, i] for i in range(params.n)]
        seqs = [
            _Sequence(request, i, np.random.default_rng(seed), self._text_stream(params), length=t)
            for i, seed in enumerate(seeds)
        ]
        self._sample_and_emit(seqs, np.repeat(logits[:, -1], params.n, axis=0), out)
        if request.trace is not None:  # no span when the prefill fails: there was no first token
            tracing.record_since(request.trace, "time to first token", {"gen_ai.usage.input_tokens": t})
        alive = [s for s in seqs if not s.finished]
        if alive:
            self._cache.add(key, value, len(alive))
            self._rows.extend(alive)

    def _text_stream(self, params: SamplingParams) -> _TextStream:
        """The model's own token -> text decoder (bytes, or its tokenizer's) with the stop strings."""
        return _TextStream(params.stop, self.handler.text_stream())

    def _decode(self, out: Outbox) -> None:
        rows, cache = self._rows, self._cache
        assert cache.key is not None and cache.value is not None
        ids = np.array([[s.next_token] for s in rows], np.int64)  # (B, 1)
        positions = np.array([[s.length] for s in rows], np.int64)  # (B, 1)
        mask = cache.decode_mask()  # (B, W+1)
        logits, key, value = self.handler.step(ids, positions, mask, cache.key, cache.value)
        cache.advance(key, value, mask)
        for s in rows:
            s.length += 1
        self._sample_and_emit(rows, logits[:, -1], out)
        if any(s.finished for s in rows):
            self._keep([s for s in rows if not s.finished])

    def _keep(self, alive: list[_Sequence]) -> None:
        index = {id(s): i for i, s in enumerate(self._rows)}
        self._cache.keep([index[id(s)] for s in alive])
        self._rows = alive

    def _sample_and_emit(self, seqs: list[_Sequence], logits: np.ndarray, out: Outbox) -> None:
        """Sample one token per sequence from ``logits`` (B, V) and turn it into chunks and metrics."""
        tokens, logprobs = next_tokens(
            logits,
            [s.request.params for s in seqs],
            [s.counts for s in seqs],
            np.array([s.rng.random() for s in seqs]),
        )
        now = time.perf_counter()
        for seq, token, logprob in zip(seqs, tokens.tolist(), logprobs, strict=True):
            if seq.generated == 0:
                self._m["time_to_first_token"].observe(now - seq.request.arrival)
            else:
                self._m["inter_token_latency"].observe(now - seq.last_time)
            seq.last_time = now
            if logprob is not None:
                seq.pending_logprobs.append(logprob)
            self._emit(seq, token, out)
        self._m["generated_tokens"].inc(len(seqs))

    def _emit(self, seq: _Sequence, token: int, out: Outbox) -> None:
        params = seq.request.params
        seq.generated += 1
        seq.next_token = token
        seq.pending.append(token)
        seq.counts[token] = seq.counts.get(token, 0) + 1
        finish: str | None = None
        if token == self.handler.eos_id:
            text, finish = seq.text.flush(), "stop"
        else:
            text, stopped = seq.text.push(token)
            if stopped:
                finish = "stop"
            elif seq.generated >= params.max_tokens or seq.length >= self.handler.context_length:
                text, finish = text + seq.text.flush(), "length"
        if text or finish:
            logprobs = seq.pending_logprobs if params.logprobs is not None else None
            out.append((seq.request, GenerationChunk(seq.choice, text, seq.pending, finish, logprobs)))
            seq.pending, seq.pending_logprobs = [], []
        seq.finished = finish is not None

    def _deliver(self, out: Outbox) -> None:
        if out and self._courier is not None:
            self._courier.send(out)

    def _fail_everything(self, error: BaseException) -> None:
        with self._cond:
            waiting, self._waiting, self._waiting_count = list(self._waiting), deque(), 0
        out: Outbox = [(r, error) for r in [*waiting, *{s.request: None for s in self._rows}]]
        self._keep([])
        self._deliver(out)


class _Courier:
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
