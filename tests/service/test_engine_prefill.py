"""GenerationEngine's chunked prefill and its two cache contracts: a long prompt that joins running
streams goes through the model a chunk per step between their decodes (so they keep streaming),
and neither chunking nor the cache kind changes a single token."""

from __future__ import annotations

import asyncio

import numpy as np

from deepserve.handlers.kv_contract import host_step, past_names
from deepserve.handlers.runtime import Runtime
from deepserve.service.engine import GenerationChunk, SamplingParams
from tests.service.test_engine import LAYERS, SlowRuntime, collect, gpt_runtime, make_engine

__all__ = ["gpt_runtime"]  # the trained tiny GPT fixture, shared with test_engine

LONG = "the quick brown fox jumps over the lazy dog, naïve café"  # 58 bytes: 8 chunks of 8
SHORT = [("the", SamplingParams(max_tokens=30, temperature=0.8, top_k=5, seed=1)),
         ("über", SamplingParams(max_tokens=30, temperature=0.0))]  # fmt: skip
LONG_PARAMS = SamplingParams(max_tokens=10, temperature=0.8, seed=7)


def tokens(chunks: list[GenerationChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


class ConcatRuntime(Runtime):
    """The same model behind the concat contract (``present`` = past + new), as an imported Hugging
    Face LM exports it: the engine must then use the left-padded batch cache."""

    def __init__(self, inner: Runtime) -> None:
        self.inner = inner
        self.input_names = ["input_ids", "position_ids", "attention_mask", "past_key", "past_value"]
        self.output_names = ["logits", "present_key", "present_value"]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, positions, mask = feeds["input_ids"], feeds["position_ids"], feeds["attention_mask"]
        logits, key, value = host_step(
            self.inner.run, "in-place", ids, positions, mask, feeds["past_key"], feeds["past_value"]
        )
        return {"logits": logits, "present_key": key, "present_value": value}

    def describe(self) -> str:
        return "concat over " + self.inner.describe()


async def test_a_long_prompt_is_prefilled_in_chunks_between_decodes(gpt_runtime: Runtime) -> None:
    recorder = SlowRuntime(gpt_runtime, delay=0.002)
    engine = make_engine(recorder, prefill_chunk=8)
    await engine.start()
    try:
        alone = [await collect(engine, p, s) for p, s in [*SHORT, (LONG, LONG_PARAMS)]]
        recorder.shapes.clear()
        running = [asyncio.create_task(collect(engine, p, s)) for p, s in SHORT]
        while engine.running < 2:
            await asyncio.sleep(0.001)
        together = [*await asyncio.gather(*running, collect(engine, LONG, LONG_PARAMS))]
    finally:
        await engine.stop()
    assert [tokens(c) for c in together] == [tokens(c) for c in alone]  # chunking changed nothing
    prefills = [t for b, t in recorder.shapes if t > 1]
    assert prefills and max(prefills) <= 8 and sum(prefills) >= len(LONG.encode()) - 8
    # between two of the long prompt's chunks the running streams decoded
    kinds = ["prefill" if t > 1 else "decode" for _, t in recorder.shapes]
    first, last = kinds.index("prefill"), len(kinds) - 1 - kinds[::-1].index("prefill")
    assert "decode" in kinds[first:last]


async def test_without_running_streams_a_prompt_is_prefilled_at_once(gpt_runtime: Runtime) -> None:
    recorder = SlowRuntime(gpt_runtime)
    engine = make_engine(recorder, prefill_chunk=8)
    await engine.start()
    try:
        await collect(engine, LONG, SamplingParams(max_tokens=2, temperature=0.0))
    finally:
        await engine.stop()
    assert recorder.shapes[0] == (1, len(LONG.encode()))  # best time to first token when nobody waits


async def test_both_cache_contracts_give_the_same_tokens(gpt_runtime: Runtime) -> None:
    results = []
    for runtime in (gpt_runtime, ConcatRuntime(gpt_runtime)):
        engine = make_engine(runtime, prefill_chunk=8)
        await engine.start()
        try:
            results.append(
                await asyncio.gather(*(collect(engine, p, s) for p, s in [*SHORT, (LONG, LONG_PARAMS)]))
            )
        finally:
            await engine.stop()
        kind = type(engine._cache).__name__
        assert kind == ("SlotCache" if runtime is gpt_runtime else "BatchCache")
    assert [tokens(c) for c in results[0]] == [tokens(c) for c in results[1]]
    assert past_names(LAYERS)[0] in gpt_runtime.input_names
