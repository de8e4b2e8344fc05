"""Overload: many times the measured capacity against each default model, and slow clients.

Capacity is measured first: the answers per second of 8 closed-loop clients, which saturate
the server. Then 256 clients (32x the saturating concurrency) send back to back on keep-alive
connections, retrying at once after a 429 as abusive clients do. Where the model is the
bottleneck (digits-cnn) that offers about 10x capacity in requests/s; for a tiny MLP the HTTP
layer is, so a 429 costs nearly what an answer does and the offered rate stays near 1.5x while
almost everything is shed (both reported). The server must answer every request exactly once
(200, or 429/503 with Retry-After), shed load, keep memory bounded, keep serving, and keep the
p99 of what it accepts bounded by its bounded queue.
CI size: 3 s per model; ``DEEPSERVE_SOAK=1``: the issue's 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.e2e.conftest import Server, free_port
from tests.reliability.conftest import BURST_S
from tests.reliability.fakes import FaultyHandler, grpc_server_for, serve_in_process
from tests.reliability.load import Pool, Tally, closed_loop, request_bytes, rss_bytes
from tests.reliability.payloads import batch_rows, model_request
from tests.reliability.store import EMBED, IMAGE, TABULAR, has

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CAPACITY_S = 1.5
MAX_CONNECTIONS = 256
RSS_GROWTH_LIMIT = 400 * 1024 * 1024  # what a full 16-deep queue plus 256 connections may add, with margin
P99_LIMIT_S = 10.0  # accepted requests wait behind at most a 16-deep queue; generous for a box shared 6 ways


async def _watch_rss(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_bytes(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def _burst(server: Server, payload: bytes) -> tuple[Tally, int]:
    """MAX_CONNECTIONS clients sending back to back for BURST_S (ignoring Retry-After, as abusive
    clients do); returns the tally and the server's peak RSS."""
    pool = Pool(server.http, MAX_CONNECTIONS)
    peak, stop = [rss_bytes(server.process.pid)], asyncio.Event()
    watcher = asyncio.create_task(_watch_rss(server.process.pid, peak, stop))
    try:
        tally = await closed_loop(pool, payload, MAX_CONNECTIONS, BURST_S, timeout=60.0)
    finally:
        stop.set()
        await watcher
        await pool.close()
    return tally, peak[0]


@pytest.mark.parametrize("model", [TABULAR, IMAGE, EMBED])
async def test_burst_of_ten_times_capacity(
    server: Server, rel_store: Path, model: str, report: list[dict[str, Any]]
) -> None:
    if not has(rel_store, model):
        pytest.skip(f"{model} is not in this store")
    payload = model_request(rel_store, model, batch_rows(server.base_url, model), server.http)
    warm = Pool(server.http, 8)
    capacity = await closed_loop(warm, payload, concurrency=8, seconds=CAPACITY_S)
    await warm.close()
    assert capacity.lost == 0 and capacity.by_status[200] > 0, capacity.errors
    rate = capacity.by_status[200] / CAPACITY_S
    rss_before = rss_bytes(server.process.pid)

    tally, rss_peak = await _burst(server, payload)

    offered = tally.sent / BURST_S
    report.append(
        {
            "test": f"overload {model}",
            "capacity_rps": round(rate),
            "offered_rps": round(offered),
            "x_capacity": round(offered / rate, 1),
            **tally.row(),
            "rss_growth_mb": round((rss_peak - rss_before) / 2**20),
        }
    )
    assert tally.lost == 0 and tally.timeouts == 0 and tally.transport_errors == 0, tally.errors
    assert tally.other == 0, f"answers other than 200/429/503: {dict(tally.by_status)} {tally.errors}"
    assert tally.missing_retry_after == 0, "a 429/503 without Retry-After"
    assert tally.by_status[200] > 0, "the server stopped serving under overload"
    assert tally.p99() < P99_LIMIT_S, f"p99 of accepted requests {tally.p99():.2f} s"
    assert rss_peak - rss_before < RSS_GROWTH_LIMIT, f"RSS grew by {(rss_peak - rss_before) / 2**20:.0f} MiB"
    assert offered > rate, f"the load generator offered only {offered:.0f}/s vs capacity {rate:.0f}/s"
    assert tally.by_status[429] > 0, "256 clients against a 16-deep queue and no load was shed"
    after = httpx.get(f"{server.base_url}/v2/health/ready", timeout=10)
    assert after.status_code == 200, "the server is not ready after the burst"


# -- slow clients -------------------------------------------------------------------------------
async def _slow_body(address: str, path: str, stop: asyncio.Event) -> None:
    """Slowloris: announce a 4 KB body, then send one byte every 50 ms until told to stop."""
    host, port = address.rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        request_bytes(address, "POST", path, b"", {"Content-Type": "application/json"}).replace(
            b"Content-Length: 0", b"Content-Length: 4096"
        )
    )
    try:
        while not stop.is_set():
            writer.write(b" ")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
    finally:
        writer.close()


def _non_reader(address: str, payload: bytes, count: int) -> socket.socket:
    """A client that pipelines ``count`` requests and never reads the answers (tiny receive buffer)."""
    host, port = address.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    data = payload * count
    with contextlib.suppress(BlockingIOError):
        while data:
            sent = sock.send(data)
            data = data[sent:]
    return sock


async def _latencies(server: Server, payload: bytes, count: int) -> list[float]:
    pool = Pool(server.http, 1)
    tally = Tally()
    for _ in range(count):
        answer, elapsed = await pool.send(payload, timeout=30)
        assert answer.status == 200, answer.body[:300]
        tally.latencies.append(elapsed)
    await pool.close()
    return tally.latencies


async def test_slow_clients_do_not_block_others(
    server: Server, rel_store: Path, report: list[dict[str, Any]]
) -> None:
    payload = model_request(rel_store, TABULAR, 1, server.http)
    big = model_request(rel_store, IMAGE, batch_rows(server.base_url, IMAGE), server.http)
    baseline = await _latencies(server, payload, 20)
    stop = asyncio.Event()
    slow = [
        asyncio.create_task(_slow_body(server.http, f"/v2/models/{TABULAR}/infer", stop)) for _ in range(20)
    ]
    stuck = [_non_reader(server.http, big, 200) for _ in range(4)]
    try:
        await asyncio.sleep(0.5)  # let them occupy the server
        during = await _latencies(server, payload, 40)
    finally:
        stop.set()
        await asyncio.gather(*slow, return_exceptions=True)
        for sock in stuck:
            sock.close()
    base_p50, p50, worst = float(np.median(baseline)), float(np.median(during)), max(during)
    report.append(
        {
            "test": "slow clients (20 byte-by-byte bodies, 4 non-readers)",
            "baseline_p50_ms": round(base_p50 * 1000, 2),
            "p50_ms": round(p50 * 1000, 2),
            "max_ms": round(worst * 1000, 1),
        }
    )
    assert p50 < max(10 * base_p50, 0.05), (
        f"normal requests slowed from {base_p50 * 1000:.1f} to {p50 * 1000:.1f} ms"
    )
    assert worst < 2.0, f"a normal request took {worst:.2f} s next to slow clients"
    started = time.perf_counter()
    assert httpx.get(f"{server.base_url}/v2/health/ready", timeout=10).status_code == 200
    assert time.perf_counter() - started < 2.0


# -- gRPC sheds load too -----------------------------------------------------------------------
async def test_grpc_answers_a_full_queue_with_unavailable(
    tmp_path: Path, report: list[dict[str, Any]]
) -> None:
    """In-process: a slow model with a 2-deep queue, 24 concurrent gRPC calls. Each call gets
    exactly one answer: OK, or UNAVAILABLE saying the queue is full."""
    slow = FaultyHandler("slow", hold=None)
    slow.delay_s = 0.05
    port = free_port()
    async with serve_in_process(tmp_path, [slow], max_queue_size=2, max_batch_size=1, grpc_port=port) as s:
        server = grpc_server_for(s.plane)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                inputs = [pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 3])]
                request = pb.ModelInferRequest(
                    model_name="slow", inputs=inputs, raw_input_contents=[np.ones((1, 3), "<f4").tobytes()]
                )

                async def call() -> tuple[grpc.StatusCode, str]:
                    try:
                        await stub.ModelInfer(request, timeout=30)
                        return grpc.StatusCode.OK, ""
                    except grpc.aio.AioRpcError as exc:
                        return exc.code(), exc.details() or ""

                answers = await asyncio.gather(*(call() for _ in range(24)))
        finally:
            await server.stop(0)
    codes = [code for code, _ in answers]
    refused = [details for code, details in answers if code == grpc.StatusCode.UNAVAILABLE]
    report.append({"test": "overload over gRPC", "sent": 24, "OK": codes.count(grpc.StatusCode.OK),
                   "UNAVAILABLE": len(refused), "lost": 24 - len(answers)})  # fmt: skip
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    assert all("retry" in details for details in refused), refused
