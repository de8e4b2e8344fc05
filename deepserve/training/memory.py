"""What ``--grad-checkpoint`` saves: peak memory of one training step with and without it.

    python -m deepserve.training.memory [--batch 32] [--models transformer gpt vit bert]

Measured with torch.profiler's memory events (``profile_memory``): the CPU allocator reports
every allocation and free with the running total, so the peak of one forward + backward above
what was allocated before it is exact, not sampled (peak RSS would also count the allocator's
caching and the interpreter). The weights' gradients are in both numbers; the difference is the
activations kept for backward, which checkpointing recomputes instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from deepserve.models import build_model

Inputs = Callable[[int], tuple[torch.Tensor, ...]]


def _text(vocab: int, T: int) -> Inputs:
    return lambda b: (torch.randint(1, vocab, (b, T)), torch.ones(b, T, dtype=torch.long))


# Sizes a little larger than the recipes', so activations dominate as they do in real training.
CONFIGS: dict[str, tuple[dict[str, Any], Inputs]] = {
    "transformer": (
        {"vocab_size": 256, "d_model": 256, "n_head": 4, "n_layer": 6, "d_ff": 1024, "max_len": 256,
         "num_classes": 6},
        _text(256, 256),
    ),
    "gpt": (
        {"vocab_size": 256, "context_length": 256, "n_layer": 6, "n_head": 4, "d_model": 256},
        lambda b: (torch.randint(0, 256, (b, 256)),),
    ),
    "vit": (
        {"image_size": 32, "patch_size": 2, "in_channels": 3, "num_classes": 10, "d_model": 192,
         "n_head": 4, "n_layer": 6, "d_ff": 384, "dropout": 0.0},
        lambda b: (torch.rand(b, 3, 32, 32),),
    ),
    "bert": (
        {"vocab_size": 30522, "hidden_size": 384, "n_layer": 6, "n_head": 12, "intermediate_size": 1536,
         "num_classes": 6},
        _text(30522, 64),
    ),
}  # fmt: skip


def _scalar(out: Any) -> torch.Tensor:
    return out.float().logsumexp(-1).mean()


def step_peak_bytes(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """Peak bytes allocated during one forward + backward, above what was allocated before it."""
    model.train()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _scalar(model(*inputs)).backward()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text(encoding="utf-8"))["traceEvents"]
    memory = [
        e["args"] for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0
    ]
    if not memory:
        return 0
    before = memory[0]["Total Allocated"] - memory[0]["Bytes"]
    return int(max(m["Total Allocated"] for m in memory) - before)


def measure(name: str, batch: int, grad_checkpoint: bool) -> dict[str, Any]:
    config, inputs = CONFIGS[name]
    torch.manual_seed(0)
    model = build_model(name, **config, grad_checkpoint=grad_checkpoint)
    x = inputs(batch)
    start = time.perf_counter()
    _scalar(model(*x)).backward()  # the step's time, without the profiler's overhead
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return {"model": name, "grad_checkpoint": grad_checkpoint, "peak_mib": step_peak_bytes(model, x) / 2**20,
            "step_seconds": seconds}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deepserve.training.memory", description=__doc__)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    print(
        "| model | batch | peak MiB, plain | peak MiB, checkpointed | saved | step s, plain | step s, ckpt |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        plain, ckpt = (measure(name, args.batch, flag) for flag in (False, True))
        saved = 1 - ckpt["peak_mib"] / plain["peak_mib"]
        print(f"| {name} | {args.batch} | {plain['peak_mib']:.0f} | {ckpt['peak_mib']:.0f} | {saved:.0%} "
              f"| {plain['step_seconds']:.2f} | {ckpt['step_seconds']:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
