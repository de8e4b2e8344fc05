"""Generation load: OpenAI-style /v1/completions streams (SSE) timed token by token.

Per request it records time to first token (TTFT), the gaps between tokens (ITL) and the number
of tokens generated (the final ``usage`` chunk when the server sends one, else the count of text
events). Generation rates are tens of requests per second, so plain asyncio streams suffice.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Sequence

import numpy as np

from deepserve.bench.samples import Recorder, StopRule

_clock = time.perf_counter


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> AsyncIterator[bytes]:
    """Yield body pieces as they arrive (chunked or Content-Length framing)."""
    lower = head.lower()
    if b"chunked" in lower:
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return
            yield (await reader.readexactly(size + 2))[:-2]
    n = lower.find(b"\r\ncontent-length:")
    if n >= 0:
        yield await reader.readexactly(int(lower[n + 17 :].split(b"\r")[0]))


class _Stream:
    """Parse one SSE response: token times and the usage count."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.times: list[float] = []
        self.usage: int | None = None
        self.buf = b""

    def feed(self, piece: bytes) -> None:
        self.buf += piece
        while b"\n\n" in self.buf:
            event, self.buf = self.buf.split(b"\n\n", 1)
            data = event.strip().removeprefix(b"data:").strip()
            if not data or data == b"[DONE]":
                continue
            msg = json.loads(data)
            if msg.get("usage"):
                self.usage = int(msg["usage"].get("completion_tokens", 0))
            choices = msg.get("choices") or []
            if choices and (choices[0].get("text") or choices[0].get("delta", {}).get("content")):
                self.times.append(_clock())


class SseLoad:
    def __init__(self, host: str, port: int, requests: Sequence[bytes]) -> None:
        self.host, self.port = host, port
        self.requests = itertools.cycle(requests)
        self.rec = Recorder(0.0)

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, t0: float) -> None:
        writer.write(next(self.requests))
        head = await reader.readuntil(b"\r\n\r\n")
        status = head[9:12].decode()
        stream, body = _Stream(t0), b""
        async for piece in _read_body(reader, head):
            if status == "200":
                stream.feed(piece)
            else:
                body += piece
        end = _clock()
        self.rec.add(t0, end, status, body)
        if status == "200" and stream.times:
            self.rec.add_stream(
                end,
                stream.times[0] - t0,
                np.diff(stream.times).tolist(),
                stream.usage if stream.usage is not None else len(stream.times),
            )

    def _stop(self, rule: StopRule) -> bool:
        return rule.done(self.rec)

    async def _worker(self, rule: StopRule) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            while not self._stop(rule):
                t0 = _clock()
                try:
                    await self._one(reader, writer, t0)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    self.rec.add(t0, _clock(), "conn-error")
                    writer.close()
                    reader, writer = await asyncio.open_connection(self.host, self.port)
        finally:
            writer.close()

    async def run_closed(self, concurrency: int, rule: StopRule) -> Recorder:
        self.rec = Recorder(rule.measure_from)
        await asyncio.gather(*(self._worker(rule) for _ in range(concurrency)))
        return self.rec

    async def run_open(self, rate: float, rule: StopRule, seed: int = 0) -> Recorder:
        self.rec = Recorder(rule.measure_from)
        gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=1 << 14)
        tasks: set[asyncio.Task[None]] = set()
        t, i = _clock(), 0
        while not self._stop(rule):
            while t <= _clock():
                task = asyncio.ensure_future(self._arrival(t))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                t, i = t + gaps[i % len(gaps)], i + 1
            await asyncio.sleep(max(0.0, t - _clock()))
        if tasks:
            await asyncio.wait(tasks, timeout=120)
        return self.rec

    async def _arrival(self, t0: float) -> None:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            self.rec.add(t0, _clock(), "conn-error")
            return
        try:
            await self._one(reader, writer, t0)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            self.rec.add(t0, _clock(), "conn-error")
        finally:
            writer.close()
