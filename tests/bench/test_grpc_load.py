"""The grpc.aio load client against the stand-in server: what it records must be what happened."""

from __future__ import annotations

import time

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from deepserve.bench import codec, launcher
from deepserve.bench.grpc_load import AioGrpcLoad
from deepserve.bench.samples import StopRule


def _requests(model: str = "tiny") -> list[bytes]:
    rows = [{"features": np.full((1, 4), i, np.float32)} for i in range(3)]
    return [codec.infer_grpc_request(model, r) for r in rows]


def _rule(seconds: float, max_measured: int = 10**9) -> StopRule:
    now = time.perf_counter()
    return StopRule(measure_from=now, stop_at=now + seconds, max_measured=max_measured, hard_stop=now + 10)


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_closed_loop_records_every_answer(standin: launcher.Server, concurrency: int) -> None:
    load = AioGrpcLoad(str(standin.grpc_target), _requests())
    rec = await load.run_closed(concurrency, _rule(0.5))
    assert len(rec.statuses) > 20 and set(rec.statuses) == {"OK"}
    latencies = [e - s for s, e in zip(rec.starts, rec.ends, strict=True)]
    assert min(latencies) > 0 and max(latencies) < 1.0
    answer = pb.ModelInferResponse.FromString(rec.first_ok)  # a real answer, not an empty OK
    assert answer.model_name == "tiny" and answer.outputs[0].name == "logits"


async def test_errors_are_recorded_with_their_message(standin: launcher.Server) -> None:
    load = AioGrpcLoad(str(standin.grpc_target), _requests("no-such-model"))
    rec = await load.run_closed(2, _rule(0.3))
    assert rec.statuses and set(rec.statuses) == {"NOT_FOUND"}
    assert "unknown model" in rec.first_error["NOT_FOUND"]


async def test_open_loop_offers_the_rate(standin: launcher.Server) -> None:
    load = AioGrpcLoad(str(standin.grpc_target), _requests())
    rec = await load.run_open(300.0, _rule(1.0))
    assert len(rec.statuses) == pytest.approx(300, rel=0.3)

