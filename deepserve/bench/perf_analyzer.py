"""Triton's perf_analyzer with the same settings, so its numbers can sit beside ours.

Found on PATH, at $DEEPSERVE_PERF_ANALYZER, or in a ``.pa-venv`` (the binary bundled in the
tritonclient 2.41/2.51 wheels, in a venv of its own: tools/install_perf_analyzer.sh; it needs
libcudart from the venv's nvidia/cuda_runtime/lib even for HTTP). Same model, protocol, tensor
format, concurrency levels, window length and the same input rows (written as perf_analyzer
--input-data JSON), for deepserve and for every ``--compare`` peer that speaks KServe v2
(Triton, the naive endpoint); each row names its server. Skips with a clear note when absent.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deepserve.bench.inputs import ModelInfo, make_samples
from deepserve.bench.sweep import RunConfig

_CANDIDATES = (".pa-venv/bin/perf_analyzer", "/opt/perf_analyzer/bin/perf_analyzer")  # tools/install_*.sh


@dataclass
class PerfAnalyzerReport:
    available: bool
    binary: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if not self.available or not self.rows:
            return f"perf_analyzer: {self.message}"
        parts = [
            f"{r.get('server', 'deepserve')} {r['run']} {r['level']:g}: {r['infer_per_s']:,.1f} infer/s "
            f"p99 {r['p99_ms']:.1f} ms" + ("" if r["stable"] else " (no stable window)")
            for r in self.rows
        ]
        return "perf_analyzer: " + "; ".join(parts) + (f" [{self.message.strip()}]" if self.message else "")


def find_binary() -> Path | None:
    env = os.environ.get("DEEPSERVE_PERF_ANALYZER")
    for c in [env, shutil.which("perf_analyzer"), *_CANDIDATES]:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c).resolve()
    return None


def _env(binary: Path) -> dict[str, str]:
    libs = list(binary.parent.parent.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib"))
    env = dict(os.environ)
    if libs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(libs[0]), env.get("LD_LIBRARY_PATH", "")])
    return env


def input_data(info: ModelInfo, out: Path, n: int = 16) -> Path:
    """Our request rows as perf_analyzer --input-data JSON (each step carries its own shape)."""
    batched = info.max_batch_size > 0  # then perf_analyzer adds the batch dim itself (-b)
    data = []
    for sample in make_samples(info, n):
        arrays = {k: v[0] if batched else v for k, v in sample.items()}
        data.append(
            {k: {"content": a.reshape(-1).tolist(), "shape": list(a.shape)} for k, a in arrays.items()}
        )
    path = out / "perf_analyzer_input.json"
    path.write_text(json.dumps({"data": data}))
    return path


def _parse_csv(path: Path, run: str) -> list[dict[str, Any]]:
    rows = []
    with path.open() as f:
        for row in csv.DictReader(f):
            level = float(row.get("Concurrency") or row.get("Request Rate") or 0)
            latencies = {f"p{p}_ms": float(row[f"p{p} latency"]) / 1e3 for p in (50, 90, 95, 99)}
            tput = float(row["Inferences/Second"])
            rows.append({"run": run, "level": level, "infer_per_s": tput, "stable": True, **latencies})
    return rows


_PASS = re.compile(r"Pass \[\d+\] throughput: ([\d.]+) infer/sec\. Avg latency: (\d+) usec")


def _last_pass(stdout: str, run: str, level: float) -> list[dict[str, Any]]:
    """perf_analyzer found no stable window: keep its last pass, marked unstable."""
    passes = _PASS.findall(stdout)
    if not passes:
        return []
    tput, avg_us = passes[-1]
    return [
        {
            "run": run,
            "level": level,
            "infer_per_s": float(tput),
            "avg_ms": int(avg_us) / 1e3,
            "p99_ms": float("nan"),
            "stable": False,
        }
    ]


def _command(
    binary: Path,
    info: ModelInfo,
    target: str,
    proto: str,
    fmt: str,
    flag: str,
    level: float,
    cfg: RunConfig,
    data: Path,
    csv_path: Path,
) -> list[str]:
    window_ms = str(int(cfg.duration_s / cfg.windows * 1000))
    return [
        str(binary),
        "-m",
        info.name,
        "-u",
        target,
        "-i",
        proto,
        flag,
        f"{level:g}",
        "-v",
        "-p",
        window_ms,
        "-s",  # its stability rule: on a shared 2-core machine 10% rarely settles, 30% does
        str(max(30, int(cfg.tolerance * 100))),
        "-r",
        str(max(3, cfg.windows + 2)),
        "--input-data",
        str(data),
        "--input-tensor-format",
        fmt,
        "--output-tensor-format",
        fmt,
        "-f",
        str(csv_path),
    ]


@dataclass(frozen=True)
class V2Server:
    """A server perf_analyzer can drive: its label, HTTP url, gRPC host:port, HTTP tensor formats."""

    label: str
    url: str | None
    grpc_url: str | None
    formats: tuple[str, ...] = ("json",)


def _runs(server: V2Server, protocol: str) -> list[tuple[str, str]]:
    runs = [("http", f) for f in server.formats] if protocol in ("http", "both") and server.url else []
    return runs + ([("grpc", "binary")] if protocol in ("grpc", "both") and server.grpc_url else [])


Rows = list[dict[str, Any]]


def _measure(binary: Path, info: ModelInfo, server: V2Server, proto: str, fmt: str, flag: str,
             level: float, cfg: RunConfig, data: Path, out: Path) -> tuple[Rows, str]:  # fmt: skip
    """One perf_analyzer run; (its rows, tagged with the server, and a message when it failed)."""
    target = str(server.url).split("//")[-1] if proto == "http" else str(server.grpc_url)
    csv_path, run = out / f"perf_analyzer_{server.label}_{proto}_{fmt}.csv", f"perf_analyzer {proto}/{fmt}"
    csv_path.unlink(missing_ok=True)
    cmd = _command(binary, info, target, proto, fmt, flag, level, cfg, data, csv_path)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(binary), timeout=600)
    if proc.returncode == 0 and csv_path.is_file():
        rows, message = _parse_csv(csv_path, run), ""
    else:
        rows = _last_pass(proc.stdout, run, level)
        last = (proc.stdout.strip().splitlines() or [""])[-1] + proc.stderr[-300:]
        message = f"{server.label} {proto}/{fmt} {level:g}: {last.strip()} "
    return [{**r, "server": server.label} for r in rows], message


def run_perf_analyzer(
    info: ModelInfo,
    url: str,
    grpc_url: str | None,
    protocol: str,
    formats: list[str],
    mode: str,
    levels: list[float],
    cfg: RunConfig,
    out: Path,
    *,
    label: str = "deepserve",
    peers: Sequence[V2Server] = (),
) -> PerfAnalyzerReport:
    """perf_analyzer against deepserve (``url``/``grpc_url``) and each v2 peer, the same rows for all."""
    binary = find_binary()
    if binary is None:
        return PerfAnalyzerReport(
            False,
            message="not found (bash deepserve/bench/tools/install_perf_analyzer.sh, or set "
            "DEEPSERVE_PERF_ANALYZER); skipped",
        )
    if info.is_generation or not info.inputs:
        return PerfAnalyzerReport(False, str(binary), message="skipped: needs a tensor model")
    data = input_data(info, out)
    report = PerfAnalyzerReport(True, str(binary))
    servers = [V2Server(label, url, grpc_url, tuple(formats)), *peers]
    flag = "--concurrency-range" if mode == "concurrency" else "--request-rate-range"
    # level by level, each server and protocol in turn: a shared machine drifts, and what is
    # compared at one level should be measured minutes apart at most, not a whole sweep apart
    for level in levels:
        for server in servers:
            for proto, fmt in _runs(server, protocol):
                rows, message = _measure(binary, info, server, proto, fmt, flag, level, cfg, data, out)
                report.rows += rows
                report.message += message
    return report
