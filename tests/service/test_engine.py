"""GenerationEngine: continuous batching must not change what a request gets, and must stream, cancel and
refuse as promised. A tiny GPT (models/gpt.py) trained for a moment gives text-like output; a scripted
runtime gives exact control over the tokens for stop strings, UTF-8 and end-of-sequence."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from deepserve.export.generative_plans import gpt_io
from deepserve.handlers.generation import TextGenerationHandler
from deepserve.handlers.runtime import Runtime
from deepserve.handlers.torch_runtime import TorchRuntime
from deepserve.models import build_model
from deepserve.models.gpt import GPTWithCache
from deepserve.service.engine import GenerationChunk, GenerationEngine, SamplingParams
from deepserve.service.errors import InvalidRequestError, QueueFullError, ShuttingDownError
from deepserve.service.metrics import Metrics
from deepserve.store import GenerationDefaults, ModelSpec, TextPreprocessing, Variant

CTX, LAYERS, HEADS, HEAD_DIM = 64, 2, 2, 16
CORPUS = "the quick brown fox jumps over the lazy dog. naïve café — über straße. " * 4


def gpt_spec(eos_id: int | None = None) -> ModelSpec:
    inputs, outputs = gpt_io(LAYERS, HEADS, HEAD_DIM, 256)  # the in-place cache contract, as exported
    return ModelSpec(
        name="tiny-gpt", version=1, task="text-generation", architecture="gpt",
        inputs=inputs, outputs=outputs, max_batch_size=16,
        preprocessing=TextPreprocessing(tokenizer="bytes", max_length=CTX, vocab_size=256),
        generation=GenerationDefaults(context_length=CTX, n_layer=LAYERS, n_head=HEADS, head_dim=HEAD_DIM,
                                      eos_id=eos_id),
        variants=[Variant(file="model.onnx", format="onnx", precision="fp32", usable=True)],
        created="2026-01-01T00:00:00Z", torch_version=torch.__version__,
    )  # fmt: skip


@pytest.fixture(scope="module")
def gpt_runtime() -> Iterator[Runtime]:
    """A tiny byte GPT trained for a few dozen steps on CORPUS, run eagerly through forward_cached."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core box: more threads only spin
    torch.manual_seed(0)
    gpt: Any = build_model("gpt", vocab_size=256, context_length=CTX, n_layer=LAYERS, n_head=HEADS,
                           d_model=HEADS * HEAD_DIM)  # fmt: skip
    data = torch.tensor(list(CORPUS.encode()), dtype=torch.long)
    opt = torch.optim.AdamW(gpt.parameters(), lr=1e-2)
    for _ in range(60):
        starts = torch.randint(0, len(data) - CTX - 1, (8,))
        x = torch.stack([data[s : s + CTX] for s in starts])
        y = torch.stack([data[s + 1 : s + CTX + 1] for s in starts])
        loss = torch.nn.functional.cross_entropy(gpt(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    yield TorchRuntime(GPTWithCache(gpt.eval()), gpt_spec(), kind="eager", file="tiny", precision="fp32",
                       device="cpu", float_dtype=torch.float32)  # fmt: skip
    torch.set_num_threads(threads)


class SlowRuntime(Runtime):
    """Wraps a runtime: counts steps, sleeps in each (to make timing visible) and can be paused."""

    def __init__(self, inner: Runtime, delay: float = 0.0) -> None:
        self.inner, self.delay, self.steps = inner, delay, 0
        self.shapes: list[tuple[int, ...]] = []
        self.input_names, self.output_names = inner.input_names, inner.output_names
        self.gate = threading.Event()
        self.gate.set()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.gate.wait(timeout=10)
        time.sleep(self.delay)
        self.steps += 1
        self.shapes.append(feeds["input_ids"].shape)
        return self.inner.run(feeds)

    def describe(self) -> str:
        return "slow " + self.inner.describe()


class ScriptRuntime(Runtime):
    """Logits that make greedy decoding follow SCRIPT: the token after position p is script[p + 1]."""

    def __init__(self, script: bytes) -> None:
        self.input_names = ["input_ids", "position_ids", "attention_mask", "past_key", "past_value"]
        self.output_names = ["logits", "present_key", "present_value"]
        self.script = np.frombuffer(script, dtype=np.uint8).astype(np.int64)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pos = feeds["position_ids"]  # (B, T)
        nxt = self.script[(pos + 1) % len(self.script)]  # (B, T)
        logits = np.eye(256, dtype=np.float32)[nxt] * 10.0  # (B, T, V)
        new = np.zeros((LAYERS, pos.shape[0], HEADS, pos.shape[1], HEAD_DIM), np.float32)
        return {"logits": logits,
                "present_key": np.concatenate([feeds["past_key"], new], axis=3),
                "present_value": np.concatenate([feeds["past_value"], new], axis=3)}  # fmt: skip

    def describe(self) -> str:
        return "script"


def make_engine(runtime: Runtime, eos_id: int | None = None, **limits: int) -> GenerationEngine:
    handler = TextGenerationHandler.with_runtime(gpt_spec(eos_id), runtime)
    return GenerationEngine(handler, Metrics(CollectorRegistry()), "tiny-gpt", **limits)


def gauge(engine: GenerationEngine, name: str) -> float | None:
    return engine.metrics.registry.get_sample_value(name, {"model": "tiny-gpt"})


async def collect(engine: GenerationEngine, prompt: str, params: SamplingParams) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.generate(prompt, params)]


def texts(chunks: list[GenerationChunk]) -> dict[int, str]:
    out: dict[int, str] = {}
    for c in chunks:
        out[c.choice] = out.get(c.choice, "") + c.text
    return out


def finish(chunks: list[GenerationChunk]) -> dict[int, str | None]:
    return {c.choice: c.finish_reason for c in chunks if c.finish_reason}


REQUESTS = [
    ("the quick", SamplingParams(max_tokens=30, temperature=0.0)),
    ("naïve", SamplingParams(max_tokens=12, temperature=0.0)),
    ("over the lazy dog. naïve café", SamplingParams(max_tokens=45, temperature=0.0)),
    ("f", SamplingParams(max_tokens=25, temperature=1.0, seed=7)),
    ("über", SamplingParams(max_tokens=20, temperature=0.8, top_k=5, seed=3)),
    ("the lazy", SamplingParams(max_tokens=35, temperature=1.2, top_p=0.9, seed=11)),
]


async def test_batched_equals_alone_greedy_and_seeded(gpt_runtime: Runtime) -> None:
    recorder = SlowRuntime(gpt_runtime)
    engine = make_engine(recorder)
    await engine.start()
    try:
        alone = [await collect(engine, p, s) for p, s in REQUESTS]

        async def join_later(i: int) -> list[GenerationChunk]:
            await asyncio.sleep(0.004 * i)  # companions join while others are mid-way
            return await collect(engine, *REQUESTS[i])

        batched = await asyncio.gather(*(join_later(i) for i in range(len(REQUESTS))))
    finally:
        await engine.stop()
    handler = engine.handler
    for (prompt, params), a, b in zip(REQUESTS, alone, batched, strict=True):
        assert texts(a) == texts(b) and finish(a) == finish(b), prompt
        assert [t for c in a for t in c.token_ids] == [t for c in b for t in c.token_ids]
        # ... and both equal the handler's plain one-request loop (same seed -> same draws)
        simple = handler.generate_ids(handler.encode(prompt), {**params.__dict__, "stop": None})
        assert [t for c in b for t in c.token_ids] == simple
    decode_sizes = [b for b, t in recorder.shapes if t == 1]
    assert max(decode_sizes) >= 4 and len(set(decode_sizes)) >= 4  # rows really joined and left mid-way
    assert engine.running == 0 and gauge(engine, "deepserve_running_sequences") == 0


async def test_first_chunk_arrives_before_the_end(gpt_runtime: Runtime) -> None:
    slow = SlowRuntime(gpt_runtime, delay=0.005)
    engine = make_engine(slow)
    await engine.start()
    start = time.perf_counter()
    arrivals: list[float] = []
    async for _ in engine.generate("the quick", SamplingParams(max_tokens=40, temperature=0.0)):
        arrivals.append(time.perf_counter() - start)
    await engine.stop()
    assert len(arrivals) >= 20  # streamed token by token, not in one piece
    assert arrivals[0] < arrivals[-1] / 4, arrivals  # first token after ~1 step of ~40
    assert gauge(engine, "deepserve_time_to_first_token_seconds_count") == 1
    assert gauge(engine, "deepserve_inter_token_latency_seconds_count") == 39


async def test_cancel_frees_the_slot_within_one_step(gpt_runtime: Runtime) -> None:
    slow = SlowRuntime(gpt_runtime, delay=0.01)
    engine = make_engine(slow)
    await engine.start()
    stream = engine.generate("the quick", SamplingParams(max_tokens=60, temperature=0.0))
    other = asyncio.create_task(collect(engine, "naïve", SamplingParams(max_tokens=50, temperature=0.0)))
    await stream.__anext__()
    await stream.__anext__()
    assert engine.running == 2
    deadline = time.perf_counter() + 2
    while not gauge(engine, "deepserve_kv_cache_bytes") and time.perf_counter() < deadline:
        await asyncio.sleep(0.001)  # gauges are set at the end of the step that sent the chunk
    kv_bytes = gauge(engine, "deepserve_kv_cache_bytes")
    per_token = 2 * LAYERS * HEADS * HEAD_DIM * 4  # key + value, float32
    assert kv_bytes is not None and kv_bytes >= 2 * len("the quick") * per_token
    await stream.aclose()  # the client went away
    calls_at_close = len(slow.shapes)
    assert finish(await other) == {0: "length"}  # the companion is unaffected
    after = [batch for batch, _ in slow.shapes[calls_at_close:]]
    assert after and all(b == 1 for b in after[1:])  # only the step already in flight still had both rows
    await engine.stop()
    assert engine.running == 0 and gauge(engine, "deepserve_kv_cache_bytes") == 0


async def test_queue_full_is_refused_at_once(gpt_runtime: Runtime) -> None:
    slow = SlowRuntime(gpt_runtime)
    engine = make_engine(slow, max_running=1, max_waiting=2)
    await engine.start()
    params = SamplingParams(max_tokens=5, temperature=0.0)
    tasks = [asyncio.create_task(collect(engine, "the", params))]
    while engine.running < 1:
        await asyncio.sleep(0.001)
    slow.gate.clear()  # hold the model: the running sequence stays, nothing leaves the queue
    for waiting in (1, 2):
        tasks.append(asyncio.create_task(collect(engine, "the", params)))
        while engine.waiting < waiting:
            await asyncio.sleep(0.001)
    assert gauge(engine, "deepserve_waiting_sequences") == 2
    with pytest.raises(QueueFullError) as info:
        await collect(engine, "the", params)
    assert info.value.status == 429 and info.value.retry_after > 0
    slow.gate.set()
    assert all(finish(chunks) == {0: "length"} for chunks in await asyncio.gather(*tasks))
    await engine.stop()


async def test_stop_strings_max_tokens_and_eos() -> None:
    script = "hello world, héllo wörld. ".encode()
    engine = make_engine(ScriptRuntime(script), eos_id=ord("."))
    await engine.start()
    try:
        params = SamplingParams(max_tokens=50, temperature=0, stop=("wörld", "xyz"))
        stopped = await collect(engine, "h", params)
        assert texts(stopped) == {0: "ello world, héllo "} and finish(stopped) == {0: "stop"}
        limited = await collect(engine, "h", SamplingParams(max_tokens=13, temperature=0))
        assert texts(limited) == {0: "ello world, h"} and finish(limited) == {0: "length"}
        assert sum(len(c.token_ids) for c in limited) == 13
        eos = await collect(engine, "hello w", SamplingParams(max_tokens=50, temperature=0))
        assert texts(eos) == {0: "orld, héllo wörld"} and finish(eos) == {0: "stop"}
    finally:
        await engine.stop()


async def test_utf8_is_never_split_across_chunks() -> None:
    engine = make_engine(ScriptRuntime("aé€😀b".encode()))
    await engine.start()
    chunks = await collect(engine, "a", SamplingParams(max_tokens=10, temperature=0))
    await engine.stop()
    assert [c.text for c in chunks] == ["é", "€", "😀", "b"]  # 2-, 3- and 4-byte characters, whole
    assert [len(c.token_ids) for c in chunks] == [2, 3, 4, 1]
    assert chunks[-1].finish_reason == "length"


async def test_context_window_limits(gpt_runtime: Runtime) -> None:
    engine = make_engine(gpt_runtime)
    await engine.start()
    try:
        with pytest.raises(InvalidRequestError, match="context window is 64") as info:
            await collect(engine, "x" * (CTX + 1), SamplingParams())
        assert info.value.status == 400
        with pytest.raises(InvalidRequestError, match="empty"):
            await collect(engine, "", SamplingParams())
        with pytest.raises(InvalidRequestError, match="top_p"):
            await collect(engine, "the", SamplingParams(top_p=0.0))
        near_end = await collect(engine, "x" * (CTX - 5), SamplingParams(max_tokens=100, temperature=0))
        assert finish(near_end) == {0: "length"}
        assert sum(len(c.token_ids) for c in near_end) == 6  # positions CTX-5 .. CTX, the last never fed back
    finally:
        await engine.stop()


async def test_n_choices(gpt_runtime: Runtime) -> None:
    engine = make_engine(gpt_runtime)
    await engine.start()
    try:
        sampled = await collect(engine, "the", SamplingParams(max_tokens=20, temperature=1.5, seed=5, n=3))
        greedy = await collect(engine, "the", SamplingParams(max_tokens=10, temperature=0, n=2))
    finally:
        await engine.stop()
    assert set(finish(sampled)) == {0, 1, 2} and len(set(texts(sampled).values())) > 1
    assert set(finish(greedy)) == {0, 1} and texts(greedy)[0] == texts(greedy)[1]
    assert gauge(engine, "deepserve_generated_tokens_total") == 3 * 20 + 2 * 10
    assert gauge(engine, "deepserve_prompt_tokens_total") == 2 * len("the")  # one shared prefill


async def test_a_drain_longer_than_its_timeout_ends_the_rest_with_shutting_down() -> None:
    """The pod's grace period is finite: streams still running at the drain timeout are ended
    (ShuttingDownError, which the transports answer 503), not waited for until SIGKILL."""
    slow = SlowRuntime(ScriptRuntime(b"abcdefgh" * 8), delay=0.05)  # 60 tokens: about 3 s
    engine = make_engine(slow)
    await engine.start()
    task = asyncio.create_task(collect(engine, "a", SamplingParams(max_tokens=60, temperature=0.0)))
    while not engine.running:
        await asyncio.sleep(0.001)
    started = time.perf_counter()
    await engine.stop(drain=True, timeout=0.3)
    assert time.perf_counter() - started < 1.5
    with pytest.raises(ShuttingDownError):
        await asyncio.wait_for(task, 5)


async def test_stop_delivers_everything_and_ends_both_threads(gpt_runtime: Runtime) -> None:
    engine = make_engine(gpt_runtime)
    await engine.start()
    names = {t.name for t in threading.enumerate() if t.name.startswith("generation-tiny-gpt")}
    assert names == {"generation-tiny-gpt", "generation-tiny-gpt-courier"}  # model loop + loop waker
    tasks = [asyncio.create_task(collect(engine, p, s)) for p, s in REQUESTS[:3]]
    while engine.running + engine.waiting < 3:
        await asyncio.sleep(0.001)
    await engine.stop(drain=True)
    for task in tasks:  # drained: every stream got its chunks up to its finishing one
        chunks = await asyncio.wait_for(task, 5)
        assert chunks[-1].finish_reason == "length" and all(c.finish_reason is None for c in chunks[:-1])
    assert not [t for t in threading.enumerate() if t.name.startswith("generation-tiny-gpt")]


async def test_logprobs_and_penalties_do_not_depend_on_batch_companions(gpt_runtime: Runtime) -> None:
    asks = [
        ("the quick", SamplingParams(max_tokens=20, temperature=0.0, logprobs=3, frequency_penalty=0.8)),
        ("naïve", SamplingParams(max_tokens=15, temperature=0.9, seed=2, presence_penalty=1.5, logprobs=0)),
        ("over the", SamplingParams(max_tokens=25, temperature=0.0, logit_bias=((ord("e"), -100.0),))),
    ]
    engine = make_engine(SlowRuntime(gpt_runtime))
    await engine.start()
    try:
        alone = [await collect(engine, p, s) for p, s in asks]
        batched = await asyncio.gather(*(collect(engine, p, s) for p, s in asks))
        with pytest.raises(InvalidRequestError, match="maximum context length is 64 tokens"):
            await collect(engine, "x" * 60, SamplingParams(max_tokens=5, refuse_past_context=True))
    finally:
        await engine.stop()
    for (prompt, params), a, b in zip(asks, alone, batched, strict=True):
        assert texts(a) == texts(b), prompt
        for chunk in a:  # one logprob per token, in every chunk, when asked for
            want = None if params.logprobs is None else len(chunk.token_ids)
            assert (None if chunk.logprobs is None else len(chunk.logprobs)) == want
        mine, companied = ([lp for c in chunks for lp in c.logprobs or []] for chunks in (a, b))
        assert [lp.token for lp in mine] == [lp.token for lp in companied]  # batched math: ~1e-7 apart
        np.testing.assert_allclose([lp.logprob for lp in mine], [lp.logprob for lp in companied], atol=1e-5)
    assert "e" not in texts(alone[2])[0]  # the banned token never comes, however likely
