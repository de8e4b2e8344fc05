"""Length grouping in the DynamicBatcher: text batches are padded to their longest item, so items
of very different lengths must not share a batch, and the oldest request still goes first."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from deepserve.handlers.base import Tensors
from deepserve.service.batching import DynamicBatcher


class TextRecorder:
    """A fake text model: answers each row with its real length; records each batch's lengths."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()

    def predict_batch(self, items: list[Tensors]) -> list[Tensors]:
        self.release.wait(timeout=10)
        self.batches.append([int(item["input_ids"].shape[1]) for item in items])
        return [{"length": item["attention_mask"].sum(axis=1)} for item in items]


def sentence(length: int, rows: int = 1) -> Tensors:
    return {
        "input_ids": np.ones((rows, length), np.int64),
        "attention_mask": np.ones((rows, length), np.int64),
    }


def cost(item: Tensors) -> int:
    return int(item["input_ids"].size)


async def _run_behind_a_busy_batch(
    model: TextRecorder, lengths: list[int], **kwargs: object
) -> tuple[list[Tensors], DynamicBatcher]:
    """Submit one blocker, then ``lengths`` while it computes; release; return each one's answer."""
    opts: dict[str, object] = {"model": "text", "max_batch_size": 8, "item_cost": cost, **kwargs}
    batcher = DynamicBatcher(model.predict_batch, **opts)  # type: ignore[arg-type]
    await batcher.start()
    blocker = asyncio.create_task(batcher.submit(sentence(4)))
    await asyncio.sleep(0.05)
    tasks = [asyncio.create_task(batcher.submit(sentence(n))) for n in lengths]
    await asyncio.sleep(0.05)
    model.release.set()
    results = await asyncio.gather(blocker, *tasks)
    await batcher.stop()
    return results[1:], batcher


async def test_mixed_lengths_are_grouped_and_each_caller_gets_its_own_answer() -> None:
    model = TextRecorder()
    lengths = [8, 64, 9, 60, 8, 62, 10, 64]
    results, _ = await _run_behind_a_busy_batch(model, lengths)
    assert [int(r["length"][0]) for r in results] == lengths  # one future per request, answers not mixed
    assert model.batches[0] == [4]
    assert sorted(map(sorted, model.batches[1:])) == [[8, 8, 9, 10], [60, 62, 64, 64]]


async def test_oldest_request_heads_the_next_batch() -> None:
    model = TextRecorder()
    await _run_behind_a_busy_batch(model, [64, 8, 8, 8, 64])
    assert model.batches[1] == [64, 64]  # the long one came first, so its group goes first
    assert model.batches[2] == [8, 8, 8]


async def test_token_budget_cuts_by_rows_times_longest() -> None:
    model = TextRecorder()
    # 70 real tokens fit a budget of 100, but padded to 40 three rows cost 120: the short ones wait
    await _run_behind_a_busy_batch(model, [10, 40, 10, 10], max_tokens=100, min_fill=0.0)
    assert model.batches[1:] == [[10, 40], [10, 10]]


async def test_equal_lengths_still_fill_the_batch() -> None:
    model = TextRecorder()
    await _run_behind_a_busy_batch(model, [16] * 10)
    assert model.batches[1:] == [[16] * 8, [16] * 2]


async def test_min_fill_zero_restores_plain_fifo() -> None:
    model = TextRecorder()
    lengths = [8, 64, 9, 60]
    await _run_behind_a_busy_batch(model, lengths, min_fill=0.0)
    assert model.batches[1:] == [lengths]
