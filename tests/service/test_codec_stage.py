"""The codec stage: slow pre/post-processing runs off the event loop, cheap work stays on it,
and the stage refuses (429) instead of queueing without bound."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from deepserve.service.codec_stage import CodecStage
from deepserve.service.errors import QueueFullError


def _where() -> str:
    return threading.current_thread().name


async def test_unmeasured_work_runs_in_the_pool_then_cheap_work_runs_inline() -> None:
    stage = CodecStage(threads=1, inline_below_s=0.001, max_waiting=4)
    cost = stage.cost("m", "pre", "tensor")
    first = await stage.run(cost, _where)
    assert first.startswith("codec"), "work never measured must not risk blocking the loop"
    assert await stage.run(cost, _where) == threading.current_thread().name  # measured cheap: inline
    stage.close()


async def test_slow_work_stays_off_the_loop_and_the_loop_keeps_serving() -> None:
    stage = CodecStage(threads=1, inline_below_s=0.001, max_waiting=4)
    cost = stage.cost("m", "pre", "bytes")

    def decode() -> str:
        time.sleep(0.05)  # a large image
        return _where()

    for _ in range(3):
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        assert (await stage.run(cost, decode)).startswith("codec")
        task.cancel()
        assert ticks >= 5, "the event loop was blocked while the slow step ran"
    stage.close()


async def test_a_kind_that_turns_slow_moves_back_to_the_pool() -> None:
    stage = CodecStage(threads=1, inline_below_s=0.002, max_waiting=4)
    cost = stage.cost("m", "post", "payload")
    await stage.run(cost, _where)  # measured: fast
    assert await stage.run(cost, _where) == threading.current_thread().name
    await stage.run(cost, time.sleep, 0.02)  # ran inline, and was slow: the average rises
    assert (await stage.run(cost, _where)).startswith("codec")
    stage.close()


async def test_a_full_stage_refuses_with_429() -> None:
    stage = CodecStage(threads=1, inline_below_s=0.0, max_waiting=1)
    cost = stage.cost("m", "pre", "bytes")
    gate = threading.Event()
    running = [asyncio.create_task(stage.run(cost, gate.wait, 5)) for _ in range(2)]  # 1 runs, 1 waits
    await asyncio.sleep(0.05)
    with pytest.raises(QueueFullError) as refused:
        await stage.run(cost, _where)
    assert refused.value.status == 429 and "retry" in refused.value.message
    gate.set()
    assert await asyncio.gather(*running) == [True, True]
    stage.close()


def test_forgetting_a_model_drops_its_measurements() -> None:
    stage = CodecStage(threads=1, inline_below_s=0.001, max_waiting=1)
    stage.cost("m", "pre", "tensor").observe(1e-6)
    stage.forget("m")
    assert stage.cost("m", "pre", "tensor").average == float("inf")
    stage.close()


async def test_failures_do_not_make_a_slow_kind_look_cheap() -> None:
    """Garbage that fails at once must not pull the slow valid work of the same kind onto the loop."""
    stage = CodecStage(threads=1, inline_below_s=0.002, max_waiting=4)
    cost = stage.cost("m", "pre", "bytes-4")
    await stage.run(cost, time.sleep, 0.02)  # a valid, slow decode

    def garbage() -> None:
        raise ValueError("cannot decode")

    for _ in range(30):
        with pytest.raises(ValueError):
            await stage.run(cost, garbage)
    assert (await stage.run(cost, _where)).startswith("codec")
    stage.close()


async def test_a_caller_that_leaves_keeps_its_slot_until_the_thread_is_done() -> None:
    stage = CodecStage(threads=1, inline_below_s=0.0, max_waiting=0)
    cost = stage.cost("m", "pre", "bytes")
    gate = threading.Event()
    leaving = asyncio.create_task(stage.run(cost, gate.wait, 5))
    await asyncio.sleep(0.05)
    leaving.cancel()  # the client went away; its decode still occupies the thread
    with pytest.raises(QueueFullError):
        await stage.run(cost, _where)
    gate.set()
    await asyncio.sleep(0.05)
    assert (await stage.run(cost, _where)).startswith("codec")
    stage.close()
