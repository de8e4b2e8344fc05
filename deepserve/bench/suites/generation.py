"""The generation suite: 16 concurrent streams vs the same 16 requests one after another.

    deepserve bench --suite generation                      # docs-gpt's default size, random weights
    deepserve bench --suite generation --version-dir model_store/docs-gpt/1 --threads 1 --no-spinning

In one run, on one loaded model (ONNX Runtime):
- sequential: the 16 requests one after another through the plain per-request loop
  (``TextGenerationHandler.generate_ids``: prefill + one cached decode per token, batch of one);
- recompute: the same loop without the KV cache (the whole prefix every token), for reference;
- engine: the 16 requests as concurrent streams through ``GenerationEngine`` (continuous batching);
- TTFT: single requests through the engine, one at a time (time from ``generate`` to the first chunk).
Every request generates exactly ``--max-tokens`` tokens (seeded sampling, no stop), so the work is equal.
Prints a table and writes REPORT.md and summary.json in --out. Speeds depend on the machine's other
load: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.table import Table

from deepserve.bench.inputs import prompts
from deepserve.handlers import read_spec
from deepserve.handlers.generation import TextGenerationHandler
from deepserve.service.engine import GenerationEngine, SamplingParams
from deepserve.service.metrics import Metrics

DOCS_GPT = {
    "vocab_size": 256,
    "context_length": 128,
    "n_layer": 4,
    "n_head": 4,
    "d_model": 128,
    "dropout": 0.0,
}


def random_docs_gpt(root: Path) -> Path:
    """A model-store version of docs-gpt's default architecture with random weights (speed only)."""
    import torch

    from deepserve.export.generative_plans import write_gpt_version
    from deepserve.models import build_model

    torch.manual_seed(0)
    version = root / "docs-gpt" / "1"
    write_gpt_version(build_model("gpt", **DOCS_GPT).eval(), version, name="docs-gpt",
                      source="random weights (benchmark)")  # fmt: skip
    return version


def params_for(i: int, max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.8, top_k=40, seed=i)


def rates(start: float, cpu_start: float, tokens: int) -> dict[str, float]:
    """Wall-clock tokens/s, and tokens per CPU-second of this process (all threads): the second does
    not depend on what else the shared machine runs."""
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "tokens_per_cpu_s": tokens / cpu,
    }


def run_sequential(handler: TextGenerationHandler, texts: list[str], max_tokens: int) -> dict[str, float]:
    start, cpu, tokens = time.perf_counter(), time.process_time(), 0
    for i, text in enumerate(texts):
        tokens += len(handler.generate_ids(handler.encode(text), params_for(i, max_tokens).__dict__))
    return rates(start, cpu, tokens)


def run_recompute(handler: TextGenerationHandler, texts: list[str], max_tokens: int) -> dict[str, float]:
    """The naive loop: no cache, the whole sequence through the graph for every token (greedy)."""
    start, cpu, tokens = time.perf_counter(), time.process_time(), 0
    for text in texts:
        ids = handler.encode(text)
        for _ in range(max_tokens):
            n = len(ids)
            key, value = handler.empty_cache(1)
            logits = handler.step(np.array([ids]), np.arange(n)[None], np.ones((1, n), np.int64), key, value)[
                0
            ]
            ids.append(int(logits[0, -1].argmax()))
            tokens += 1
    return rates(start, cpu, tokens)


async def stream(
    engine: GenerationEngine, text: str, params: SamplingParams
) -> tuple[float, list[float], int]:
    """(time to first chunk, gaps between chunks, tokens) as the client sees them."""
    start = time.perf_counter()
    times: list[float] = []
    tokens = 0
    async for chunk in engine.generate(text, params):
        times.append(time.perf_counter())
        tokens += len(chunk.token_ids)
    return times[0] - start, [b - a for a, b in itertools.pairwise(times)], tokens


async def run_engine(engine: GenerationEngine, texts: list[str], max_tokens: int) -> dict[str, Any]:
    start, cpu = time.perf_counter(), time.process_time()
    results = await asyncio.gather(
        *(stream(engine, t, params_for(i, max_tokens)) for i, t in enumerate(texts))
    )
    summary: dict[str, Any] = rates(start, cpu, sum(r[2] for r in results))
    gaps = [g for r in results for g in r[1]]
    ttfts = [r[0] for r in results]
    summary.update(ttft_p50_ms=pct(ttfts, 50), itl_p50_ms=pct(gaps, 50), itl_p99_ms=pct(gaps, 99))
    return summary


async def run_single_ttft(engine: GenerationEngine, texts: list[str], repeats: int) -> dict[str, float]:
    ttfts, gaps = [], []
    for i in range(repeats):
        ttft, gap, _ = await stream(engine, texts[i % len(texts)], params_for(i, 16))
        ttfts.append(ttft)
        gaps.extend(gap)
    return {"ttft_p50_ms": pct(ttfts, 50), "ttft_p99_ms": pct(ttfts, 99), "itl_p50_ms": pct(gaps, 50)}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


async def measure(handler: TextGenerationHandler, args: argparse.Namespace) -> dict[str, Any]:
    texts = prompts(args.streams)  # the bench's documentation prompts
    engine = GenerationEngine(handler, Metrics(CollectorRegistry()), "docs-gpt", max_running=args.streams)
    await engine.start()
    try:
        await run_engine(engine, texts[:4], 8)  # warm-up: sessions, allocator, code paths
        rounds = []
        for _ in range(args.rounds):  # interleaved, so a burst of load elsewhere hits both sides
            seq = run_sequential(handler, texts, args.max_tokens)
            eng = await run_engine(engine, texts, args.max_tokens)
            rounds.append((seq, eng))
        single = await run_single_ttft(engine, texts, args.ttft_requests)
    finally:
        await engine.stop()
    recompute = run_recompute(handler, texts, args.max_tokens) if args.recompute else None
    ratios = [e["tokens_per_s"] / s["tokens_per_s"] for s, e in rounds]
    median = sorted(range(len(rounds)), key=lambda k: ratios[k])[len(rounds) // 2]
    seq, eng = rounds[median]
    result = {"sequential": seq, "engine": eng, "recompute": recompute, "single_client": single,
              "ratio_vs_cached_loop": ratios[median], "ratios_vs_cached_loop": ratios,
              "cpu_ratio_vs_cached_loop": eng["tokens_per_cpu_s"] / seq["tokens_per_cpu_s"]}  # fmt: skip
    if recompute:
        result["ratio_vs_recompute_loop"] = eng["tokens_per_s"] / recompute["tokens_per_s"]
    return result


COLUMNS = ("run", "tok/s", "tok/CPU-s", "s", "TTFT p50 ms", "ITL p50 ms", "ITL p99 ms")


def table_rows(result: dict[str, Any], streams: int) -> list[list[str]]:
    """The table's rows as cells, for the console and for REPORT.md alike."""
    seq, eng, one, rec = result["sequential"], result["engine"], result["single_client"], result["recompute"]
    rows = [("sequential, KV-cache loop", seq, None), ("sequential, no cache (naive)", rec, None),
            (f"engine, {streams} streams", eng, eng), ("engine, 1 client", None, one)]  # fmt: skip
    out = []
    for name, rate, lat in rows:
        if rate is None and lat is None:
            continue
        cells = [
            f"{rate[k]:.{d}f}" if rate else ""
            for k, d in (("tokens_per_s", 0), ("tokens_per_cpu_s", 0), ("seconds", 2))
        ]
        cells += [
            f"{lat[k]:.1f}" if lat and k in lat else "" for k in ("ttft_p50_ms", "itl_p50_ms", "itl_p99_ms")
        ]
        out.append([name, *cells])
    return out


def findings(result: dict[str, Any], streams: int) -> list[str]:
    one, eng = result["single_client"], result["engine"]
    lines = [f"engine vs sequential KV-cache loop: {result['ratio_vs_cached_loop']:.2f}x tokens/s (rounds: "
             f"{', '.join(f'{r:.2f}' for r in result['ratios_vs_cached_loop'])}), "
             f"{result['cpu_ratio_vs_cached_loop']:.2f}x tokens per CPU-second"]  # fmt: skip
    if "ratio_vs_recompute_loop" in result:
        lines.append(f"engine vs sequential no-cache loop: {result['ratio_vs_recompute_loop']:.2f}x tokens/s")
    lines.append(f"TTFT p50, one client: {one['ttft_p50_ms']:.1f} ms; ITL p99 at {streams} streams: "
                 f"{eng['itl_p99_ms']:.1f} ms")  # fmt: skip
    return lines


def report(result: dict[str, Any], args: argparse.Namespace, model: str, command: str) -> str:
    """Print the table and findings; returns them as REPORT.md."""
    title = f"{model}: {args.streams} requests x {args.max_tokens} tokens (median round)"
    rows, notes = table_rows(result, args.streams), findings(result, args.streams)
    table = Table(title=title)
    for col in COLUMNS:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row)
    console = Console(width=120)
    console.print(table)
    console.print("\n".join(notes))
    lines = ["## Generation engine", "", f"Command: `{command}`", "", f"{title}.", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|---" + "|--:" * (len(COLUMNS) - 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", *(f"- {n}." for n in notes), ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="deepserve bench --suite generation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--version-dir", type=Path, help="a text-generation model-store version (default: random docs-gpt)"
    )
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ttft-requests", type=int, default=20)
    p.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)"
    )
    p.add_argument(
        "--no-spinning", action="store_true", help="ONNX Runtime threads sleep instead of spinning"
    )
    p.add_argument("--no-recompute", dest="recompute", action="store_false", help="skip the no-cache loop")
    p.add_argument("--out", type=Path, default=Path("bench/results/generation"),
                   help="folder for REPORT.md and summary.json")  # fmt: skip
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        version = args.version_dir or random_docs_gpt(Path(tmp))
        spec = read_spec(version)
        if spec.task != "text-generation":
            raise SystemExit(f"{version} is a {spec.task} model, not text-generation")
        handler = TextGenerationHandler(spec, version, threads=args.threads, spinning=not args.no_spinning)
        handler.load()
        result = asyncio.run(measure(handler, args))
    result["config"] = {**vars(args), "version_dir": str(version), "runtime": handler.runtime.describe()
                        if handler.runtime else None, "out": str(args.out)}  # fmt: skip
    command = "deepserve bench --suite generation " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = report(result, args, f"{handler.spec.name} ({result['config']['runtime']})", command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "REPORT.md").write_text(text, encoding="utf-8")
    (args.out / "summary.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return 0
