"""``deepserve bench MODEL``: load-test a running deepserve (or one it starts) and report.

    deepserve bench digits-cnn --store model_store --protocol both --format binary --concurrency 1,8,32
    deepserve bench tabular-mlp --url http://127.0.0.1:8000 --rate 200,400 --duration 20
    deepserve bench minilm --store model_store --slo-p99-ms 250
    deepserve bench --make-models /tmp/bench_store          # the classifiers suite's bench models
    deepserve bench bench-mlp --store /tmp/bench_store --protocol both --compare triton,torchserve,naive

Writes results.csv, results.json, throughput.png and latency.png into --out and prints a table.

``deepserve bench --suite NAME [options]`` runs a named suite instead and writes its page under
bench/results/NAME/ (``deepserve bench --suite NAME --help`` for its options):
  classifiers  seeded ResNet-18-shaped CNN and tiny MLP vs a naive server, in-process, perf_analyzer
  defaults     the default models of a store
  generation   the generation engine's concurrent streams vs the same requests one at a time
  compare      tiny MLP beside Triton (PyTriton), TorchServe and the naive server, in one run
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from deepserve.bench.peers import parse_peers
from deepserve.bench.sweep import LevelResult, RunConfig


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _target_args(p: argparse.ArgumentParser) -> None:
    """What to load and how: server, protocol, encoding, request shape."""
    a = p.add_argument
    a("model", nargs="?", help="model name in the store / on the server")
    a("--url", help="a running server, e.g. http://127.0.0.1:8000 (default: start one on loopback)")
    a("--grpc-url", help="host:port of its gRPC endpoint (default: URL host, port 8001)")
    a("--store", type=Path, default=Path("model_store"), help="model store (default ./model_store)")
    a("--server-env", action="append", default=[], metavar="KEY=VALUE",
      help="setting for the server the bench starts, e.g. DEEPSERVE_MODELS='{...}' (repeatable)")
    a("--label", default="deepserve", help="name of the server under test in tables and plots")
    a("--protocol", choices=["http", "grpc", "both"], default="http")
    a("--format", choices=["json", "binary", "both"], default="json", help="v2 tensor encoding (HTTP)")
    a("--rows", type=int, default=1, help="rows (items) per request")
    a("--seq-len", type=int, help="text models: every row exactly this many real tokens")
    a("--pad-to", type=int, help="text models: real sentences padded to this length (mask 0)")
    a("--max-tokens", type=int, default=32, help="generation models: tokens per completion")


def _load_args(p: argparse.ArgumentParser) -> None:
    """Load levels and the measurement rules."""
    a = p.add_argument
    a("--concurrency", type=_floats, help="closed-loop client counts, e.g. 1,8,32")
    a("--rate", type=_floats, help="open-loop Poisson arrival rates in req/s (instead of concurrency)")
    a("--duration", type=float, help="measured seconds per level (default 10; quick 1.5)")
    a("--requests", type=int, default=100_000, help="upper bound on measured requests per level")
    a("--warmup", type=float, help="uncounted warm-up seconds per level (default 2; quick 0.5)")
    a("--windows", type=int, help="measurement windows that must agree (default 3; quick 2)")
    a("--min-per-window", type=int,
      help="extend a level until each window holds this many answers per client (default 2; quick 0)")
    a("--max-duration", type=float, help="longest measured phase after extension (default 6x duration)")
    a("--tolerance", type=float, default=0.1, help="allowed deviation across windows (0.1 = 10%%)")
    a("--slo-p99-ms", type=float, help="also search for the highest throughput with p99 under this")
    a("--slo-max-level", type=float, default=256)
    a("--quick", action="store_true", help="short levels for a smoke test")


def _baseline_args(p: argparse.ArgumentParser) -> None:
    """What the served figures are compared with, and where results go."""
    a = p.add_argument
    a("--naive", action="store_true", help="also bench a naive FastAPI endpoint (= naive in --compare)")
    a("--no-ceiling", action="store_true", help="skip the in-process ceiling")
    a("--ceiling-batches", type=_floats, default=[1, 8, 16, 32, 64])
    a("--threads", type=int, help="ONNX Runtime threads for the ceiling, naive and triton")
    a("--device", default="cpu", help="device for the in-process ceiling (cpu, cuda)")
    a("--precision", help="variant precision for the ceiling (default: the server's choice)")
    a("--compare", type=parse_peers, metavar="PEERS",
      help="serve the same model with these peers too and measure them in the same sweep, level by "
      "level: a comma-separated list of triton (PyTriton), torchserve, naive")
    a("--triton-delay-us", type=int, default=100, help="Triton's max_queue_delay_microseconds (--compare)")
    a("--no-install", action="store_true", help="skip a peer whose tool is missing instead of installing it")
    a("--perf-analyzer", action="store_true", help="also run perf_analyzer, on deepserve and v2 peers")
    a("--out", type=Path, help="output folder (default bench/out/MODEL-TIMESTAMP)")
    a("--make-models", type=Path, metavar="STORE", help="create the classifiers suite's models, then exit")


def _suite_arg(p: argparse.ArgumentParser) -> None:
    from deepserve.bench.suites import SUITES

    p.add_argument("--suite", choices=list(SUITES), help="run a named suite (its options follow it)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="deepserve bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    _suite_arg(p)
    _target_args(p)
    _load_args(p)
    _baseline_args(p)
    args = p.parse_args(argv)
    if not args.make_models and not args.model:
        p.error("MODEL is required (or --make-models STORE)")
    return args


def run_config(args: argparse.Namespace) -> RunConfig:
    q = args.quick
    return RunConfig(
        warmup_s=args.warmup if args.warmup is not None else (0.5 if q else 2.0),
        duration_s=args.duration or (1.5 if q else 10.0),
        windows=args.windows or (2 if q else 3),
        max_requests=args.requests,
        tolerance=args.tolerance,
        min_per_window=args.min_per_window if args.min_per_window is not None else (0 if q else 2),
        max_duration_s=args.max_duration or 6 * (args.duration or (1.5 if q else 10.0)),
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(prog="deepserve bench", add_help=False, allow_abbrev=False)
    _suite_arg(pre)
    known, rest = pre.parse_known_args(argv)
    if known.suite:
        from deepserve.bench.suites import run_suite

        return run_suite(known.suite, rest)
    args = parse_args(argv)
    if args.make_models:
        from deepserve.bench.models import make_bench_models

        for name, path in make_bench_models(args.make_models).items():
            print(f"{name}: {path}")
        return 0
    from deepserve.bench.session import BenchSession

    console = Console(stderr=True)
    out = args.out or Path("bench/out") / f"{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        _unwind_on_sigterm(stack)
        session = BenchSession(args, run_config(args), console, out, stack)
        doc = session.run()
    write_outputs(doc, session.results, out, console, session.ceiling_value())
    return 0


def _unwind_on_sigterm(stack: ExitStack) -> None:
    """SIGTERM (a timeout, a shared machine's job control) unwinds like Ctrl-C, so the servers and
    peers the run started are stopped by ``stack`` instead of being left running."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stack.callback(signal.signal, signal.SIGTERM, previous)


def write_outputs(
    doc: dict[str, Any], results: list[LevelResult], out: Path, console: Console, ceiling: float | None
) -> None:
    from deepserve.bench import plots, report

    doc["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        **doc.get("machine", {}),
    }
    report.write_json(doc, out / "results.json")
    report.write_csv(results, out / "results.csv")
    if results:
        plots.plot(results, out, doc["model"], ceiling)
    wide = Console() if sys.stdout.isatty() else Console(width=240)
    wide.print(report.table(results, f"deepserve bench {doc['model']}"))
    _write_comparison(doc, out, wide)
    for r in results:
        for status, body in r.error_samples.items():
            console.print(
                f"[red]{r.target} {r.mode}={r.level:g}: {r.errors[status]} x {status}[/red] e.g. {body!r}"
            )
    extra = ", compare.png" if (out / "compare.png").is_file() else ""
    console.print(f"results in {out}/ (results.csv, results.json, throughput.png, latency.png{extra})")


def _write_comparison(doc: dict[str, Any], out: Path, console: Console) -> None:
    """The side-by-side table and compare.png when peers were measured."""
    from deepserve.bench import compare

    if not doc.get("comparison"):
        return
    rows, peers, ours = compare.from_dicts(doc["comparison"]), list(doc.get("peers", {})), doc["label"]
    console.print(compare.table(rows, ours, peers))
    compare.plot(rows, ours, peers, out / "compare.png")


if __name__ == "__main__":
    raise SystemExit(main())
