"""Continuous batching for text generation: one cached decode step for every running sequence.

One worker thread owns the model loop (the event loop only enqueues requests and relays chunks;
a courier thread (``service/courier.py``) wakes the event loops, so the worker never waits on the GIL
for them):

    every step:  drop cancelled sequences -> take waiting ones into prefill while rows are free ->
                 prefill up to a token budget (whole prompts when nothing decodes; ``prefill_chunk``
                 tokens while sequences decode, so a long prompt cannot stall them) and sample the
                 first token of each prompt that finished -> ONE decode over all running sequences
                 -> sample, stream, and drop the finished ones at once

KV cache: the handler's ``open_cache`` (``handlers/kv_contract.py``): for the zoo GPT, per-slot
buffers the graph reads in place and never copies (``handlers/slot_cache.py``); for graphs with a
``present`` output, one left-padded batch cache (``handlers/concat_cache.py``). Rows keep the
cache's order: ``keep`` says where each surviving row went.

Prompts are prefilled one at a time (no padding), so a sequence's prefix is computed exactly as if
it ran alone, and each sequence samples from its own seeded generator: a fixed seed gives the same
text whatever the batch companions. Prefill is compute-bound on CPU: one padded batch of 16 prompts
took 18% longer than 16 single prefills, and would hold every first token until the whole batch ends.
A chunk costs about what a decode of the running rows costs when ``prefill_chunk`` is near their
number, which bounds the inter-token latency of the running streams at about twice its usual value.
Traced requests get spans (``service.tracing``): ``queue wait`` to their prefill, ``time to first token``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepserve.handlers.base import InvalidInputError
from deepserve.handlers.generation import TextGenerationHandler
from deepserve.handlers.kv_contract import KVCache
from deepserve.handlers.tokenizer import ByteStream, TextStream
from deepserve.service import tracing
from deepserve.service.courier import Courier
from deepserve.service.errors import (
    InvalidRequestError,
    ModelNotReadyError,
    QueueFullError,
    ShuttingDownError,
)
from deepserve.service.metrics import Metrics
from deepserve.service.sampling import SamplingParams, TokenLogprob, next_tokens

__all__ = ["GenerationChunk", "GenerationEngine", "SamplingParams"]  # SamplingParams: from sampling.py
log = logging.getLogger(__name__)


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
class _Prefill:
    """A request whose prompt is going through the model, chunk by chunk."""

    request: _Request
    handle: Any  # the cache's own record of the prompt (``KVCache.begin``)
    done: int = 0  # prompt tokens already through the model


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
        prefill_chunk: int | None = None,
    ) -> None:
        """``prefill_chunk``: prompt tokens prefilled per step while sequences decode (default
        ``max_running``); ``max_tokens_per_step`` caps prefill when nothing decodes."""
        self.handler, self.metrics, self.model = handler, metrics, model
        self.max_running, self.max_waiting = max_running, max_waiting
        self.max_tokens_per_step = max_tokens_per_step
        self.prefill_chunk = prefill_chunk or max_running
        self._cond = threading.Condition()  # guards _waiting, _waiting_count, _stopping
        self._waiting: deque[_Request] = deque()
        self._waiting_count = 0
        self._rows: list[_Sequence] = []  # worker-owned, in cache row order
        self._prefilling: deque[_Prefill] = deque()  # worker-owned, admitted, prompt not through yet
        self._cache: KVCache | None = None  # opened by the worker (the model is loaded by then)
        self._thread: threading.Thread | None = None
        self._courier: Courier | None = None
        self._accepting = False
        self._stopping = False
        self._m = {
            name: getattr(metrics, name).labels(model=model)
            for name in ("prompt_tokens", "generated_tokens", "time_to_first_token", "inter_token_latency",
                         "running_sequences", "waiting_sequences", "kv_cache_bytes")
        }  # fmt: skip

    @property
    def running(self) -> int:
        """Sequences decoding, and those of prompts being prefilled."""
        return len(self._rows) + sum(p.request.params.n for p in list(self._prefilling))

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
        self._courier = Courier(f"generation-{self.model}-courier")
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
                while not (self._stopping or self._waiting or self._rows or self._prefilling):
                    self._cond.wait()
                if self._stopping:
                    break
            self._step()
        self._fail_everything(ShuttingDownError(f"model {self.model!r} is shutting down; retry elsewhere"))

    def _opened(self) -> KVCache:
        if self._cache is None:
            self._cache = self.handler.open_cache(self.max_running)
        return self._cache

    def _step(self) -> None:
        cache = self._opened()
        if any(s.request.cancelled for s in self._rows):
            self._keep([s for s in self._rows if not s.request.cancelled])
        if any(p.request.cancelled for p in self._prefilling):
            self._prefilling = deque(p for p in self._prefilling if not p.request.cancelled)
        self._prefill_some(cache)
        if self._rows:
            out: Outbox = []
            try:
                self._decode(cache, out)
            except Exception as exc:  # a runtime failure fails the batch it hit, not the engine
                log.exception("decode step of %s failed", self.model)
                out.extend((r, exc) for r in {s.request: None for s in self._rows})
                self._keep([])
            self._deliver(out)
        self._m["running_sequences"].set(len(self._rows))
        self._m["waiting_sequences"].set(self._waiting_count)
        self._m["kv_cache_bytes"].set(cache.nbytes)

    def _admit(self, cache: KVCache) -> None:
        """Move waiting requests into prefill while their rows fit (rows are held from admission)."""
        held = len(self._rows) + sum(p.request.params.n for p in self._prefilling)
        while True:
            with self._cond:
                if not self._waiting:
                    return
                request = self._waiting[0]
                if held + request.params.n > self.max_running and not request.cancelled:
                    return
                self._waiting.popleft()
                self._waiting_count -= request.params.n
            if request.cancelled:
                continue
            held += request.params.n
            if request.trace is not None:
                tracing.record_since(request.trace, "queue wait", {"deepserve.model": self.model})
            self._prefilling.append(_Prefill(request, cache.begin(len(request.prompt))))

    def _prefill_some(self, cache: KVCache) -> None:
        """Prefill admitted prompts in order within this step's token budget; a prompt that is
        through samples its first token (sent at once) and joins the decode rows. While any row
        decodes (from before this step or joined during it) the budget is ``prefill_chunk``."""
        budget = self.max_tokens_per_step
        while True:
            if self._rows:
                budget = min(budget, self.prefill_chunk, max(1, self.max_tokens_per_step - len(self._rows)))
            if budget <= 0:
                return
            if not self._prefilling:
                self._admit(cache)  # requests that arrived during the last prefill join this step
                if not self._prefilling:
                    return
            item = self._prefilling[0]
            prompt = item.request.prompt
            chunk = prompt[item.done : item.done + budget] if self._rows else prompt[item.done :]
            out: Outbox = []
            try:
                logits = cache.prefill(item.handle, chunk)
                item.done += len(chunk)
                budget -= len(chunk)
                if item.done == len(prompt):
                    self._prefilling.popleft()
                    self._first_tokens(cache, item, logits, out)
            except Exception as exc:  # this prompt's failure is its own
                log.exception("prefill of a %s request failed", self.model)
                self._prefilling.popleft()
                out.append((item.request, exc))
            self._deliver(out)

    def _first_tokens(self, cache: KVCache, item: _Prefill, logits: np.ndarray, out: Outbox) -> None:
        request = item.request
        params, t = request.params, len(request.prompt)
        self._m["prompt_tokens"].inc(t)
        seeds = [None if params.seed is None else [params.seed, i] for i in range(params.n)]
        seqs = [
            _Sequence(request, i, np.random.default_rng(seed), self._text_stream(params), length=t)
            for i, seed in enumerate(seeds)
        ]
        self._sample_and_emit(seqs, np.repeat(logits[None], params.n, axis=0), out)
        if request.trace is not None:  # no span when the prefill fails: there was no first token
            tracing.record_since(request.trace, "time to first token", {"gen_ai.usage.input_tokens": t})
        alive = [s for s in seqs if not s.finished]
        if alive:
            cache.join(item.handle, len(alive))
            self._rows.extend(alive)

    def _text_stream(self, params: SamplingParams) -> _TextStream:
        """The model's own token -> text decoder (bytes, or its tokenizer's) with the stop strings."""
        return _TextStream(params.stop, self.handler.text_stream())

    def _decode(self, cache: KVCache, out: Outbox) -> None:
        rows = self._rows
        logits = cache.decode(np.array([s.next_token for s in rows], np.int64))
        for s in rows:
            s.length += 1
        self._sample_and_emit(rows, logits, out)
        if any(s.finished for s in rows):
            self._keep([s for s in rows if not s.finished])

    def _keep(self, alive: list[_Sequence]) -> None:
        index = {id(s): i for i, s in enumerate(self._rows)}
        rows = self._rows
        order = self._opened().keep([index[id(s)] for s in alive])
        self._rows = [rows[i] for i in order]

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
        running = [*{s.request: None for s in self._rows}, *(p.request for p in self._prefilling)]
        out: Outbox = [(r, error) for r in [*waiting, *running]]
        self._prefilling.clear()
        if self._cache is not None:
            self._keep([])
        self._deliver(out)
