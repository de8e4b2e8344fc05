"""The classifiers suite: ResNet-18-shaped CNN and tiny MLP bench models, in one run.

    deepserve bench --suite classifiers --store /tmp/deepserve-bench-store

1. makes the bench models (``deepserve.bench.models``) through the normal export path into --store;
2. ResNet-18-shaped 3x224x224 classifier: binary tensors over HTTP at 32 clients, beside the
   in-process ONNX Runtime ceiling measured in the same run;
3. tiny MLP: JSON over HTTP and gRPC at 1, 8 and 32 clients, beside a naive FastAPI endpoint
   serving the same file (same request bytes), then perf_analyzer on both protocols (when
   deepserve/bench/tools/install_perf_analyzer.sh installed it): the gRPC-vs-HTTP verdict is its;
then checks the targets and writes REPORT.md (tables, verdicts, exact commands), the plots and
summary.json in --out; each run's raw results and logs stay in --raw.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepserve.bench.pages import pick, run_bench, section, write_summary


@dataclass
class Verdict:
    target: str
    measured: str
    ok: bool


def _verdicts(resnet: dict[str, Any], mlp: dict[str, Any]) -> list[Verdict]:
    out: list[Verdict] = []
    r32 = pick(resnet, "deepserve http/binary", 32)
    if r32 is not None:
        pct, p99 = r32.pct_of_ceiling or 0.0, r32.latency["p99_ms"]
        out.append(
            Verdict(
                "ResNet-18 binary @32: >= 85% of in-process, p99 < 1.5 s",
                f"{pct:.0f}% ({r32.items_per_s:.1f} vs {resnet['ceiling']['items_per_s']:.1f} img/s), "
                f"p99 {p99:.0f} ms",
                pct >= 85 and p99 < 1500,
            )
        )
    m1, m32 = pick(mlp, "deepserve http/json", 1), pick(mlp, "deepserve http/json", 32)
    n32 = pick(mlp, "naive-fastapi http/json", 32)
    if m1 is not None:
        out.append(
            Verdict(
                "MLP JSON @1: p50 <= 1 ms", f"p50 {m1.latency['p50_ms']:.2f} ms", m1.latency["p50_ms"] <= 1.0
            )
        )
    if m32 is not None:
        out.append(Verdict("MLP JSON @32: >= 3,000 req/s", f"{m32.rps:,.0f} req/s", m32.rps >= 3000))
    if m32 is not None and n32 is not None:
        ratio = m32.rps / n32.rps if n32.rps else float("inf")
        out.append(
            Verdict(
                "MLP JSON @32: >= 1.3x naive FastAPI",
                f"{ratio:.2f}x ({n32.rps:,.0f} req/s naive)",
                ratio >= 1.3,
            )
        )
    out += _grpc_verdicts(mlp)
    ready = (mlp.get("server") or {}).get("ready_s")
    if ready is not None:
        out.append(Verdict("server ready within 3 s (bench store)", f"{ready:.2f} s", ready <= 3.0))
    return out


def _pa_rows(doc: dict[str, Any]) -> dict[tuple[str, float], dict[str, Any]]:
    rows = (doc.get("perf_analyzer") or {}).get("rows") or []
    return {(r["run"], r["level"]): r for r in rows if r.get("server", "deepserve") == "deepserve"}


def _grpc_verdicts(mlp: dict[str, Any]) -> list[Verdict]:
    """gRPC against HTTP with one client binary for both: perf_analyzer (C++), when installed.

    Our own generators are two different clients (asyncio HTTP, grpc.aio) sharing the server's
    2 cores, and grpc.aio's Python costs as much per call as the server, so one binary for both
    protocols is the fairer judge; our figures stay in the table with the client's CPU beside them.
    5% is the noise allowance.
    """
    out: list[Verdict] = []
    pa = _pa_rows(mlp)
    for level in (1, 8, 32):
        g, h = pa.get(("perf_analyzer grpc/binary", level)), pa.get(("perf_analyzer http/json", level))
        if g is not None and h is not None:
            ratio = g["infer_per_s"] / h["infer_per_s"]
            out.append(Verdict(
                f"MLP @{level}: gRPC no slower than HTTP (perf_analyzer drives both)",
                f"gRPC {g['infer_per_s']:,.0f} vs HTTP JSON {h['infer_per_s']:,.0f} infer/s ({ratio:.2f}x)"
                + ("" if g["stable"] and h["stable"] else " (a window did not settle)"),
                ratio >= 0.95,
            ))  # fmt: skip
    for level in (1, 32):
        ours_g, ours_h = pick(mlp, "deepserve grpc", level), pick(mlp, "deepserve http/json", level)
        if ours_g is not None and ours_h is not None and not out:  # no perf_analyzer: ours is all there is
            out.append(
                Verdict(
                    f"MLP @{level}: gRPC no slower than HTTP (our generators; install perf_analyzer)",
                    f"gRPC {ours_g.rps:,.0f} vs HTTP {ours_h.rps:,.0f} req/s",
                    ours_g.rps >= 0.95 * ours_h.rps,
                )
            )
    return out


def _pa_table(doc: dict[str, Any]) -> str:
    pa = doc.get("perf_analyzer") or {}
    if not pa.get("rows"):
        return f"perf_analyzer: {pa.get('message') or 'not run'}\n"
    lines = [f"perf_analyzer ({pa.get('binary')}): same server, same rows, protocols in turn per level.", ""]
    lines += ["| run | clients | infer/s | p50 ms | p99 ms | stable |", "|---|---|---|---|---|---|"]
    def ms(value: float | None) -> str:
        return "-" if value is None or value != value else f"{value:.2f}"

    for r in pa["rows"]:
        lines.append(
            f"| {r['run']} | {r['level']:g} | {r['infer_per_s']:,.1f} | {ms(r.get('p50_ms'))} "
            f"| {ms(r.get('p99_ms'))} | {'yes' if r['stable'] else 'no (last window)'} |"
        )
    return "\n".join(lines) + "\n"


def render(resnet: dict[str, Any], mlp: dict[str, Any], command: str, page_dir: Path) -> str:
    lines = ["## Classifiers (bench models)", "", f"One run: `{command}`", ""]
    lines += [section("ResNet-18-shaped classifier, 3x224x224, binary tensors", resnet, page_dir)]
    lines += [section("Tiny MLP 64-512-256-10, JSON", mlp, page_dir)]
    lines += [_pa_table(mlp)]
    lines += ["### Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {v.target} | {v.measured} | {'yes' if v.ok else 'NO'} |" for v in _verdicts(resnet, mlp)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deepserve bench --suite classifiers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--store", type=Path, default=Path("/tmp/deepserve-bench-store"))
    p.add_argument("--out", type=Path, default=Path("bench/results/classifiers"), help="the page")
    p.add_argument("--raw", type=Path, default=Path("bench/out/classifiers"), help="raw results, logs")
    p.add_argument("--duration", default="15")
    p.add_argument("--warmup", default="3")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from deepserve.bench.models import make_bench_models

    print(f"bench models: {make_bench_models(args.store)}", flush=True)
    common = ["--store", str(args.store), "--duration", args.duration, "--warmup", args.warmup]
    resnet = run_bench(
        ["bench-resnet18", *common, "--format", "binary", "--concurrency", "32",
         "--ceiling-batches", "1,8,16,32", "--naive", "--out", str(args.raw / "resnet18")],
        args.out / "resnet18",
    )  # fmt: skip
    mlp = run_bench(
        ["bench-mlp", *common, "--format", "json", "--protocol", "both", "--concurrency", "1,8,32",
         "--naive", "--perf-analyzer", "--out", str(args.raw / "mlp")],
        args.out / "mlp",
    )  # fmt: skip
    command = "deepserve bench --suite classifiers " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = render(resnet, mlp, command, args.out)
    (args.out / "REPORT.md").write_text(text)
    write_summary({"resnet18": resnet, "mlp": mlp}, args.out)
    print(text)
    return 0
