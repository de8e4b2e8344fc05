"""Generation through the server with the openai SDK: concurrency, first token, and a long prompt joining.

    deepserve bench --suite openai-streams [--version-dir DIR] [--streams 16] [--max-tokens 64]

Starts ``deepserve serve`` on a store holding one GPT (docs-gpt's architecture with random weights
and a 1,024-token context unless ``--version-dir`` names one), then, with ``openai.AsyncOpenAI``:

- sequential: ``--streams`` completions of ``--max-tokens`` tokens, one after another;
- concurrent: the same requests at once (continuous batching); the ratio of the two is the figure;
- TTFT: single streamed requests, one at a time (time to the first chunk);
- join: ``--streams`` long streams run, and a ``--join-tokens``-token prompt arrives mid-way; the
  inter-token gaps of the running streams while it is prefilled (p50, p99) show whether chunked
  prefill keeps them streaming.

Every request is seeded and has no stop, so every run generates exactly the same tokens.
Writes summary.json in --out and prints a table. Compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from deepserve.bench.launcher import start_deepserve


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="deepserve bench --suite openai-streams", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--version-dir", type=Path, default=None, help="a GPT version folder to serve")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--join-tokens", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("bench/results/openai-streams"))
    return parser.parse_args(argv)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1e3) if values else float("nan")


async def _one(
    client: Any, model: str, prompt: str, max_tokens: int, seed: int
) -> tuple[float, list[float], int]:
    """(seconds to the first chunk, arrival times of every chunk, completion tokens)."""
    start = time.perf_counter()
    arrivals: list[float] = []
    stream = await client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.8, seed=seed, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    tokens = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            arrivals.append(time.perf_counter())
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return arrivals[0] - start, arrivals, tokens


async def measure(base_url: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    prompts = [f"Request {i}: the for statement" for i in range(args.streams)]
    await _one(client, model, prompts[0], 4, 0)  # warm-up
    start = time.perf_counter()
    seq = [await _one(client, model, p, args.max_tokens, i) for i, p in enumerate(prompts)]
    seq_s = time.perf_counter() - start
    start = time.perf_counter()
    conc = await asyncio.gather(*(_one(client, model, p, args.max_tokens, i) for i, p in enumerate(prompts)))
    conc_s = time.perf_counter() - start
    ttft = [(await _one(client, model, "The for statement", 8, 99))[0] for _ in range(10)]
    join = await _join(client, model, args)
    seq_tokens, conc_tokens = sum(r[2] for r in seq), sum(r[2] for r in conc)
    return {
        "sequential_tokens_per_s": seq_tokens / seq_s,
        "concurrent_tokens_per_s": conc_tokens / conc_s,
        "speedup": (conc_tokens / conc_s) / (seq_tokens / seq_s),
        "ttft_p50_ms": pct(ttft, 50),
        **join,
    }


async def _join(client: Any, model: str, args: argparse.Namespace) -> dict[str, Any]:
    """Gaps between chunks of running streams, before and while a long prompt is prefilled."""
    long_prompt = "x" * args.join_tokens  # bytes tokenizer: one token per byte
    tasks = [asyncio.create_task(_one(client, model, f"stream {i}", 4 * args.max_tokens, i))
             for i in range(args.streams)]  # fmt: skip
    await asyncio.sleep(0.3)
    joined_at = time.perf_counter()
    ttft_long, _, _ = await _one(client, model, long_prompt, 8, 1234)
    first_long = joined_at + ttft_long
    runs = await asyncio.gather(*tasks)
    gaps_all, gaps_join = [], []
    for _, arrivals, _ in runs:
        for a, b in itertools.pairwise(arrivals):
            gaps_all.append(b - a)
            if joined_at <= b <= first_long:
                gaps_join.append(b - a)
    return {
        "itl_p50_ms": pct(gaps_all, 50),
        "itl_p99_ms": pct(gaps_all, 99),
        "itl_during_join_p50_ms": pct(gaps_join, 50),
        "itl_during_join_max_ms": max(gaps_join, default=float("nan")) * 1e3,
        "join_ttft_ms": ttft_long * 1e3,
        "join_prompt_tokens": args.join_tokens,
    }


def _random_store(root: Path) -> Path:
    import torch

    from deepserve.bench.suites.generation import DOCS_GPT
    from deepserve.export.generative_plans import write_gpt_version
    from deepserve.models import build_model

    torch.manual_seed(0)
    model = build_model("gpt", **{**DOCS_GPT, "context_length": 1024}).eval()
    write_gpt_version(model, root / "docs-gpt" / "1", name="docs-gpt", source="random weights (benchmark)")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        if args.version_dir is None:
            _random_store(root)
        else:
            (root / "docs-gpt").mkdir(parents=True)
            (root / "docs-gpt" / "1").symlink_to(args.version_dir.resolve())
        server = start_deepserve(root, Path(tmp) / "server.log")
        try:
            summary = asyncio.run(measure(server.url, "docs-gpt", args))
        finally:
            server.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    for key, value in summary.items():
        print(f"{key:28s} {value:10.2f}")
    return 0
