"""The compare suite: deepserve beside Triton (PyTriton), TorchServe and the naive endpoint, in one run.

    deepserve bench --suite compare --store /tmp/deepserve-bench-store

Makes the tiny MLP bench model (``deepserve.bench.models``) and runs one `deepserve bench` over
HTTP JSON and gRPC at 1, 8 and 32 clients with ``--compare triton,torchserve,naive`` and
perf_analyzer: every server serves the same model file and gets the same rows, level by level,
from the bench's own generator, and from perf_analyzer where the server speaks KServe v2. Writes
REPORT.md (the side-by-side table: deepserve / peer per level), the plots (compare.png among them)
and summary.json in --out; the raw results and logs stay in --raw.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from deepserve.bench.pages import run_bench, section, write_summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deepserve bench --suite compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--store", type=Path, default=Path("/tmp/deepserve-bench-store"))
    p.add_argument("--out", type=Path, default=Path("bench/results/compare"), help="the page")
    p.add_argument("--raw", type=Path, default=Path("bench/out/compare"), help="raw results, logs")
    p.add_argument("--peers", default="triton,torchserve,naive", help="the --compare list")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--duration", default="5")
    p.add_argument("--warmup", default="1")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from deepserve.bench.models import make_bench_models

    print(f"bench models: {make_bench_models(args.store, names=['bench-mlp'])}", flush=True)
    mlp = run_bench(
        ["bench-mlp", "--store", str(args.store), "--duration", args.duration, "--warmup", args.warmup,
         "--format", "json", "--protocol", "both", "--concurrency", args.concurrency, "--no-ceiling",
         "--compare", args.peers, "--perf-analyzer", "--out", str(args.raw / "mlp")],
        args.out / "mlp",
    )  # fmt: skip
    command = "deepserve bench --suite compare " + shlex.join(sys.argv[1:] if argv is None else argv)
    head = ["## Side by side: Triton (PyTriton), TorchServe, naive FastAPI", "", f"One run: `{command}`", ""]
    text = "\n".join([*head, section("Tiny MLP 64-512-256-10", mlp, args.out)])
    (args.out / "REPORT.md").write_text(text)
    write_summary({"mlp": mlp}, args.out)
    print(text)
    return 0
