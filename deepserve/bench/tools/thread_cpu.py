"""Where a running server spends its CPU per request, thread by thread, under perf_analyzer.

Runs perf_analyzer at one concurrency against a server that is already up, once per protocol and
round (interleaved, so drift hits both alike), and reads each server thread's CPU time from /proc
before and after, and the request count from /metrics. The answer is CPU microseconds per request
for each thread: the event loop (the main thread, which also frames gRPC), the model workers and
ONNX Runtime's threads (unnamed).

    python -m deepserve.bench.tools.thread_cpu --pid "$(pgrep -f 'deepserve serve' | head -1)" \\
        --model bench-mlp --concurrency 1 --seconds 8 --rounds 2

Linux only (/proc). The server's HTTP port serves /metrics; gRPC is its HTTP port + 1 unless given.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from deepserve.bench.perf_analyzer import _env, find_binary

_TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[tuple[int, str], float]:
    """CPU seconds (user + system) of every thread of ``pid``, keyed by (tid, name)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[(int(tid), name)] = (int(fields[11]) + int(fields[12])) / _TICK
    return out


def requests_served(http: str) -> float:
    text = urllib.request.urlopen(f"http://{http}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r"^deepserve_requests_total\{[^}]*\} (\S+)", text, re.M))


def measure(args: argparse.Namespace, binary: Path, protocol: str) -> None:
    url = args.http if protocol == "http" else args.grpc
    fmt = args.format if protocol == "http" else "binary"
    cmd = [str(binary), "-m", args.model, "-u", url, "-i", protocol, "--concurrency-range",
           str(args.concurrency), "-p", str(int(args.seconds * 1000)), "-s", "100", "-r", "1",
           "--input-tensor-format", fmt, "--output-tensor-format", fmt]  # fmt: skip
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(binary))
    time.sleep(1.5)  # past connection set-up and the first requests
    before, served0, t0 = thread_cpu(args.pid), requests_served(args.http), time.monotonic()
    time.sleep(args.seconds - 1)
    after, served1, t1 = thread_cpu(args.pid), requests_served(args.http), time.monotonic()
    run.wait()
    n = max(1.0, served1 - served0)
    total = sum(after.values()) - sum(before.get(k, 0.0) for k in after)
    rate = n / (t1 - t0)
    print(f"{protocol} {fmt} c={args.concurrency}: {rate:,.0f} req/s, server {1e6 * total / n:,.0f} us/req")
    rows = sorted(((after[k] - before.get(k, 0.0), k) for k in after), reverse=True)
    for spent, (tid, name) in rows:
        if spent > 0:
            label = "event loop (main thread)" if tid == args.pid else name
            print(f"    {label:26s} {1e6 * spent / n:6,.0f} us/req")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pid", type=int, required=True, help="the deepserve serve process")
    parser.add_argument("--model", default="bench-mlp")
    parser.add_argument("--http", default="127.0.0.1:8000")
    parser.add_argument("--grpc", default=None, help="default: the HTTP port + 1")
    parser.add_argument("--format", default="json", choices=["json", "binary"], help="HTTP tensor format")
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    if args.grpc is None:
        host, port = args.http.rsplit(":", 1)
        args.grpc = f"{host}:{int(port) + 1}"
    binary = find_binary()
    if binary is None:
        sys.exit("perf_analyzer not found: bash deepserve/bench/tools/install_perf_analyzer.sh")
    for _ in range(args.rounds):
        for protocol in args.protocols.split(","):
            measure(args, binary, protocol)


if __name__ == "__main__":
    main()
