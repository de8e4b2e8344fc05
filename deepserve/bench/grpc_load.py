"""gRPC load: ModelInfer calls over grpc.aio, requests serialized once, answers never parsed.

``AioGrpcLoad.run_closed`` / ``run_open`` -> ``Recorder``, the interface the HTTP generator has.
Closed loop: ``concurrency`` calls in flight on one HTTP/2 channel; open loop: Poisson arrivals,
latency counted from the scheduled time. Each call costs 90-270 us of Python in the client, as
much as the server under test on a 2-core machine, so these figures understate gRPC; the bench's
gRPC-vs-HTTP verdict comes from perf_analyzer (``--perf-analyzer``), one client binary driving
both protocols.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence

import numpy as np

from deepserve.bench.samples import Recorder, StopRule

_clock = time.perf_counter
_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_OPTIONS = [("grpc.max_receive_message_length", 2**31 - 1), ("grpc.max_send_message_length", 2**31 - 1)]


def _identity(b: bytes) -> bytes:
    return b


class AioGrpcLoad:
    client = "grpc.aio"

    def __init__(self, target: str, requests: Sequence[bytes], *, timeout_s: float = 60.0) -> None:
        if not requests:
            raise ValueError("need at least one request to send")
        self.target, self.timeout_s = target, timeout_s
        self.requests = itertools.cycle(requests)
        self.rec = Recorder(0.0)

    async def _call(self, stub: object, t0: float) -> None:
        import grpc

        try:
            body = await stub(next(self.requests), timeout=self.timeout_s)  # type: ignore[operator]
            self.rec.add(t0, _clock(), "OK", body)
        except grpc.aio.AioRpcError as exc:
            self.rec.add(t0, _clock(), exc.code().name, (exc.details() or "").encode())

    def _stop(self, rule: StopRule) -> bool:
        return rule.done(self.rec)

    async def run_closed(self, concurrency: int, rule: StopRule) -> Recorder:
        import grpc

        self.rec = Recorder(rule.measure_from)
        async with grpc.aio.insecure_channel(self.target, options=_OPTIONS) as channel:
            stub = channel.unary_unary(_METHOD, request_serializer=_identity, response_deserializer=_identity)

            async def worker() -> None:
                while not self._stop(rule):
                    await self._call(stub, _clock())

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return self.rec

    async def run_open(self, rate: float, rule: StopRule, seed: int = 0) -> Recorder:
        import grpc

        self.rec = Recorder(rule.measure_from)
        gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=1 << 16)
        tasks: set[asyncio.Task[None]] = set()
        async with grpc.aio.insecure_channel(self.target, options=_OPTIONS) as channel:
            stub = channel.unary_unary(_METHOD, request_serializer=_identity, response_deserializer=_identity)
            t, i = _clock(), 0
            while not self._stop(rule):
                while t <= _clock():
                    task = asyncio.ensure_future(self._call(stub, t))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    t, i = t + gaps[i % len(gaps)], i + 1
                await asyncio.sleep(max(0.0, t - _clock()))
            if tasks:
                await asyncio.wait(tasks, timeout=self.timeout_s)
        return self.rec
