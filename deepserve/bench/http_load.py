"""A cheap HTTP/1.1 load generator: asyncio protocols over keep-alive sockets, pre-encoded requests.

Each connection is an ``asyncio.Protocol`` that writes a ready-made request and parses only the
status line and Content-Length (or chunked framing) of the answer, so a request costs the client
a few microseconds of Python (with uvloop) and the 2-core machine stays free for the server.
Closed loop: ``concurrency`` connections, each sending its next request as soon as the previous
answer arrives. Open loop: Poisson arrivals at ``rate`` per second, latency counted from the
scheduled arrival (so a slow server cannot hide queueing: no coordinated omission).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections import deque
from collections.abc import Sequence

import numpy as np

from deepserve.bench.samples import Recorder, StopRule

_clock = time.perf_counter


def _chunked_end(buf: bytearray, pos: int) -> int:
    """End offset of a complete chunked body starting at ``pos``, or -1 while incomplete."""
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return -1
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        pos = eol + 2 + size + 2
        if len(buf) < pos:
            return -1
        if size == 0:
            return pos


class _Conn(asyncio.Protocol):
    def __init__(self, load: HttpLoad) -> None:
        self.load = load
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.t0 = 0.0
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # Nagle + delayed ACK: ~40 ms
        self.transport = transport  # type: ignore[assignment]  # uvloop's transport is not a subclass

    def send(self, data: bytes, t0: float) -> None:
        self.t0, self.busy = t0, True
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self.buf[:head_end]).lower()
        n = head.find(b"\r\ncontent-length:")  # not inference-header-content-length
        if n >= 0:
            eol = head.find(b"\r", n + 2)
            end = head_end + 4 + int(head[n + 17 : eol if eol > 0 else None])
            if len(self.buf) < end:
                return
        elif b"chunked" in head:
            end = _chunked_end(self.buf, head_end + 4)
            if end < 0:
                return
        else:
            end = head_end + 4
        status, body = head[9:12].decode(), bytes(self.buf[head_end + 4 : end])
        del self.buf[:end]
        self.busy = False
        self.load.done(self, status, body, b"connection: close" in head)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.load.lost(self)


class HttpLoad:
    """Drive one host:port with a cycle of pre-encoded requests; results go to a Recorder."""

    def __init__(
        self, host: str, port: int, requests: Sequence[bytes], *, max_connections: int = 512
    ) -> None:
        if not requests:
            raise ValueError("need at least one request to send")
        self.host, self.port = host, port
        self.requests = itertools.cycle(requests)
        self.max_connections = max_connections
        self.conns: list[_Conn] = []
        self.connecting = 0
        self._tasks: set[asyncio.Future[None]] = set()  # reconnects in flight (kept referenced)
        self.idle: deque[_Conn] = deque()
        self.pending: deque[float] = deque()  # open loop: scheduled arrival times not yet sent
        self.rec = Recorder(0.0)
        self.rule = StopRule(0.0, 0.0, 0)
        self.closed_loop = True
        self.finished: asyncio.Future[None] | None = None

    def _stopping(self) -> bool:
        return self.rule.done(self.rec)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        self.connecting += 1
        try:
            _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        finally:
            self.connecting -= 1
        self.conns.append(conn)
        return conn

    def done(self, conn: _Conn, status: str, body: bytes, close: bool) -> None:
        self.rec.add(conn.t0, _clock(), status, body)
        if close and conn.transport is not None:
            conn.transport.close()  # lost() reconnects
            return
        self._next(conn)

    def lost(self, conn: _Conn) -> None:
        if conn.busy:
            conn.busy = False
            self.rec.add(conn.t0, _clock(), "conn-error")
        if conn in self.conns:
            self.conns.remove(conn)
        if not self._stopping() and self.closed_loop:
            self._spawn_reconnect()
        self._check_finished()

    def _spawn_reconnect(self) -> None:
        task = asyncio.ensure_future(self._reconnect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reconnect(self) -> None:
        try:
            self._next(await self._connect())
        except OSError:
            self.rec.add(_clock(), _clock(), "conn-error")
            await asyncio.sleep(0.05)
            if not self._stopping():
                self._spawn_reconnect()
            self._check_finished()

    def _next(self, conn: _Conn) -> None:
        if self.closed_loop:
            if not self._stopping():
                conn.send(next(self.requests), _clock())
                return
        elif self.pending:
            conn.send(next(self.requests), self.pending.popleft())
            return
        self.idle.append(conn)
        self._check_finished()

    def _check_finished(self) -> None:
        if self.finished is None or self.finished.done() or not self._stopping():
            return
        if not any(c.busy for c in self.conns) and not self.pending:
            self.finished.set_result(None)

    async def run_closed(self, concurrency: int, rule: StopRule) -> Recorder:
        self._reset(rule, closed=True)
        for conn in await asyncio.gather(*(self._connect() for _ in range(concurrency))):
            self._next(conn)
        return await self._finish()

    async def run_open(self, rate: float, rule: StopRule, seed: int = 0) -> Recorder:
        """Poisson arrivals at ``rate``/s until the stop rule fires."""
        self._reset(rule, closed=False)
        gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=1 << 16)
        t, i = _clock(), 0
        while not self._stopping():
            now = _clock()
            while t <= now:
                self._arrive(t)
                t, i = t + gaps[i % len(gaps)], i + 1
            await asyncio.sleep(max(0.0, t - _clock()))
        return await self._finish()

    def _arrive(self, scheduled: float) -> None:
        while self.idle and self.idle[0].transport is None:
            self.idle.popleft()
        if self.idle:
            self.idle.popleft().send(next(self.requests), scheduled)
            return
        self.pending.append(scheduled)
        if len(self.conns) + self.connecting < self.max_connections:
            self._spawn_reconnect()

    def _reset(self, rule: StopRule, *, closed: bool) -> None:
        self.rec = Recorder(rule.measure_from)
        self.rule, self.closed_loop = rule, closed
        self.finished = asyncio.get_running_loop().create_future()

    async def _finish(self, grace_s: float = 30.0) -> Recorder:
        assert self.finished is not None
        self._check_finished()
        try:
            await asyncio.wait_for(asyncio.shield(self.finished), timeout=max(grace_s, 0.1))
        except TimeoutError:
            now = _clock()
            for c in self.conns:
                if c.busy:
                    self.rec.add(c.t0, now, "timeout")
        self.close()
        return self.rec

    def close(self) -> None:
        self.rule.force()
        for c in list(self.conns):
            if c.transport is not None:
                c.busy = False
                c.transport.close()
        self.conns.clear()
        self.idle.clear()
        self.pending.clear()
