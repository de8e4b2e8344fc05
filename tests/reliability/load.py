"""A small HTTP/1.1 load generator on raw asyncio sockets, and the tally it keeps.

httpx costs ~1 ms of client CPU per request; on a 2-core box shared with the server that would
measure the client. Raw keep-alive sockets cost a few tens of microseconds, so the server is
what saturates. Every request ends in exactly one tally bucket: an HTTP status, a client
timeout, or a transport error (connection reset / closed mid-answer) -> ``lost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Tally:
    sent: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    timeouts: int = 0
    transport_errors: int = 0
    missing_retry_after: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, 200 answers only
    errors: list[str] = field(default_factory=list)  # first few bodies of unexpected answers

    def record(self, answer: Answer, elapsed: float) -> None:
        self.by_status[answer.status] += 1
        if answer.status == 200:
            self.latencies.append(elapsed)
        elif answer.status in (429, 503):
            if "retry-after" not in answer.headers:
                self.missing_retry_after += 1
        elif len(self.errors) < 5:
            self.errors.append(f"{answer.status}: {answer.body[:300]!r}")

    @property
    def answered(self) -> int:
        return sum(self.by_status.values())

    @property
    def lost(self) -> int:
        """Sent but never answered: the number that must be zero."""
        return self.sent - self.answered

    @property
    def other(self) -> int:
        return sum(n for code, n in self.by_status.items() if code not in (200, 429, 503))

    def p99(self) -> float:
        return float(np.percentile(self.latencies, 99)) if self.latencies else 0.0

    def row(self) -> dict[str, object]:
        return {
            "sent": self.sent,
            "200": self.by_status[200],
            "429": self.by_status[429],
            "503": self.by_status[503],
            "other": self.other,
            "timeouts": self.timeouts,
            "transport_errors": self.transport_errors,
            "lost": self.lost,
            "p99_ms": round(self.p99() * 1000, 1),
        }


def request_bytes(
    host: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One HTTP/1.1 response with Content-Length or chunked encoding."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers = {}
    for line in header_lines:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            body += await reader.readexactly(size + 2)
            if size == 0:
                break
            del body[-2:]
        return Answer(status, headers, bytes(body))
    return Answer(status, headers, await reader.readexactly(int(headers.get("content-length", "0"))))


class Pool:
    """Keep-alive connections to one host:port, opened on demand up to ``max_connections``."""

    def __init__(self, address: str, max_connections: int) -> None:
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(max_connections)
        self.opened = 0

    async def send(self, payload: bytes, timeout: float) -> tuple[Answer, float]:
        """(answer, seconds from writing the request to reading the answer)."""
        async with self._slots:
            if self._idle:
                reader, writer = self._idle.pop()
            else:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                self.opened += 1
            start = time.perf_counter()
            try:
                writer.write(payload)
                answer = await asyncio.wait_for(read_answer(reader), timeout)
            except BaseException:
                writer.close()
                raise
            if answer.headers.get("connection", "").lower() == "close":
                writer.close()
            else:
                self._idle.append((reader, writer))
            return answer, time.perf_counter() - start

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        self._idle.clear()


async def one(pool: Pool, payload: bytes, tally: Tally, timeout: float) -> Answer | None:
    tally.sent += 1
    try:
        answer, elapsed = await pool.send(payload, timeout)
    except TimeoutError:
        tally.timeouts += 1
        return None
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        tally.transport_errors += 1
        if len(tally.errors) < 5:
            tally.errors.append(f"transport: {type(exc).__name__}: {exc}")
        return None
    tally.record(answer, elapsed)
    return answer


async def closed_loop(
    pool: Pool, payload: bytes, concurrency: int, seconds: float, timeout: float = 30.0
) -> Tally:
    """``concurrency`` clients, each sending the next request when the last is answered."""
    tally = Tally()
    stop = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop:
            await one(pool, payload, tally, timeout)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return tally


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
