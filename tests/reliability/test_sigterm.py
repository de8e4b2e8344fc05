"""SIGTERM under load: readiness false at once, new requests refused, in-flight work (streams
included) finished, exit 0, and no accepted request lost.

Load: closed-loop clients on keep-alive connections (tabular + full image batches) and streaming
completions on the GPT. Each client behaves like a well-behaved one: it stops at its first 503
(the server said "go elsewhere"). Every request it sent must have an answer: 200 or 503 with
Retry-After; a connection closed under a sent request is a lost request.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Server, start_server
from tests.reliability.load import Pool, Tally, one
from tests.reliability.payloads import batch_rows, model_request
from tests.reliability.store import GPT, IMAGE, TABULAR, has

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DRAIN_S = 15
STREAMS = 24
MODELS = [TABULAR, IMAGE, GPT]  # the rest of a full store only lengthens start-up


async def _client(server: Server, payload: bytes, tally: Tally, refused: asyncio.Event) -> None:
    pool = Pool(server.http, 1)
    try:
        while True:
            answer = await one(pool, payload, tally, timeout=DRAIN_S + 5)
            if answer is None or answer.status == 503:
                refused.set()
                return
    finally:
        await pool.close()


async def _stream(client: httpx.AsyncClient, first_done: asyncio.Event) -> dict[str, Any]:
    """One streamed completion; returns what arrived (finish reason, chunks, the [DONE] marker)."""
    body = {
        "model": GPT,
        # within the quick GPT's 32-token context: past it, OpenAI's rule is a 400, not a cut stream
        "prompt": "def f():",
        "max_tokens": 20,
        "stream": True,
        "temperature": 0,
    }
    seen: dict[str, Any] = {"chunks": 0, "done": False, "finish_reason": None, "status": None, "done_at": 0.0}
    async with client.stream("POST", "/v1/completions", json=body) as response:
        seen["status"] = response.status_code
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                seen["done"], seen["done_at"] = True, time.perf_counter()
                first_done.set()
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                seen["chunks"] += 1
                seen["finish_reason"] = event["choices"][0]["finish_reason"] or seen["finish_reason"]
    return seen


async def _ready_turns_false(client: httpx.AsyncClient, limit: float) -> float:
    signalled = time.perf_counter()
    while time.perf_counter() - signalled < limit:
        if (await client.get("/v2/health/ready")).status_code == 503:
            return time.perf_counter() - signalled
        await asyncio.sleep(0.01)
    return float("inf")


async def test_sigterm_under_load_loses_nothing(
    rel_store: Path, tmp_path: Path, report: list[dict[str, Any]]
) -> None:
    # one running sequence at a time and SIGTERM when the first stream ends: the other streams are
    # then surely accepted and in flight (waiting in the engine), even with a GPT whose context
    # window is tiny and whose streams last milliseconds
    server = start_server(
        rel_store,
        tmp_path / "server.log",
        DEEPSERVE_DRAIN_TIMEOUT_S=str(DRAIN_S),
        DEEPSERVE_MAX_RUNNING_SEQUENCES="1",
        DEEPSERVE_LOAD_MODELS=json.dumps(MODELS),
    )
    try:
        await _drain_under_load(server, rel_store, report)
    finally:
        if server.process.poll() is None:
            server.process.kill()


async def _drain_under_load(server: Server, store: Path, report: list[dict[str, Any]]) -> None:
    payloads = [
        model_request(store, TABULAR, 1, server.http),
        model_request(store, IMAGE, batch_rows(server.base_url, IMAGE), server.http),
    ]
    tally, refused = Tally(), asyncio.Event()
    clients = [asyncio.create_task(_client(server, payloads[i % 2], tally, refused)) for i in range(12)]
    async with httpx.AsyncClient(base_url=server.base_url, timeout=DRAIN_S + 10) as http:
        while tally.by_status[200] < 50:  # load is running
            await asyncio.sleep(0.05)
        first_done = asyncio.Event()
        streams = [
            asyncio.create_task(_stream(http, first_done)) for _ in range(STREAMS if has(store, GPT) else 0)
        ]
        if streams:
            await asyncio.wait_for(first_done.wait(), 30)  # the others wait behind it in the engine
        sent_before = tally.sent
        server.process.send_signal(signal.SIGTERM)
        signalled = time.perf_counter()
        ready_after = await _ready_turns_false(http, 2.0)
        fresh = await http.post(f"/v2/models/{TABULAR}/infer", content=payloads[0].split(b"\r\n\r\n", 1)[1])
        seen = await asyncio.gather(*streams)
    await asyncio.wait_for(asyncio.gather(*clients), DRAIN_S + 10)
    code = await asyncio.to_thread(server.process.wait, DRAIN_S + 10)

    report.append(
        {
            "test": "SIGTERM under load",
            "sent": tally.sent,
            "sent_before_signal": sent_before,
            "answers": dict(tally.by_status),
            "streams": len(seen),
            "streams_finished_after_signal": sum(s["done_at"] > signalled for s in seen),
            "lost": tally.lost + tally.transport_errors + tally.timeouts,
            "exit": code,
        }
    )
    assert ready_after < 1.0, f"readiness still true {ready_after:.2f} s after SIGTERM"
    assert fresh.status_code == 503 and "Retry-After" in fresh.headers, fresh.text
    assert tally.lost == 0 and tally.transport_errors == 0 and tally.timeouts == 0, tally.errors
    assert tally.other == 0 and tally.missing_retry_after == 0, (dict(tally.by_status), tally.errors)
    assert tally.by_status[200] >= sent_before - len(clients), (
        "requests in flight at SIGTERM were not finished"
    )
    for stream in seen:
        assert stream["status"] == 200 and stream["done"] and stream["finish_reason"] in ("stop", "length"), (
            stream
        )
    if seen:
        assert max(s["done_at"] for s in seen) > signalled, "no stream was still running at SIGTERM"
    assert code == 0, f"exit code {code}:\n{server.log.read_text()[-3000:]}"
