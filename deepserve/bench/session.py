"""One `deepserve bench` run: server, inputs, ceiling, peers, sweep, SLO search, extras, comparison.

Every step that needs something absent (a store for the ceiling, a peer's tool, perf_analyzer) is
skipped with a note in the report instead of failing the whole run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from deepserve.bench import compare, launcher, runner
from deepserve.bench.ceiling import Ceiling, measure_ceiling
from deepserve.bench.inputs import ModelInfo
from deepserve.bench.model_info import resolve
from deepserve.bench.peers import Batching, PeerContext, PeerServer, start_peers
from deepserve.bench.server_stats import model_config
from deepserve.bench.sweep import LevelResult, RunConfig, Target
from deepserve.bench.targets import Shape, build_targets, split_url


class BenchSession:
    def __init__(
        self, args: argparse.Namespace, cfg: RunConfig, console: Console, out: Path, stack: ExitStack
    ) -> None:
        self.args, self.cfg, self.console, self.out, self.stack = args, cfg, console, out, stack
        self.results: list[LevelResult] = []
        self.notes: list[str] = []
        self.ceiling: Ceiling | None = None
        self.doc: dict[str, Any] = {
            "model": args.model,
            "label": args.label,
            "command": "deepserve bench " + shlex.join(sys.argv[1:]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": asdict(cfg),
        }
        self.doc["machine"] = {"loadavg": [round(x, 2) for x in os.getloadavg()]}

    @property
    def shape(self) -> Shape:
        a = self.args
        return Shape(rows=a.rows, seq_len=a.seq_len, pad_to=a.pad_to, max_tokens=a.max_tokens)

    @property
    def mode(self) -> str:
        return "rate" if self.args.rate else "concurrency"

    @property
    def levels(self) -> list[float]:
        return self.args.rate or self.args.concurrency or ([1, 4] if self.args.quick else [1, 8, 32])

    def ceiling_value(self) -> float | None:
        return self.ceiling.items_per_s if self.ceiling else None

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.console.print(text)

    def _server(self) -> tuple[str, str | None, int | None]:
        """(HTTP url, gRPC target, server pid if we started it)."""
        if self.args.url:
            host, _ = split_url(self.args.url)
            return self.args.url.rstrip("/"), self.args.grpc_url or f"{host}:8001", None
        with self.console.status(f"starting deepserve serve --store {self.args.store} ..."):
            env = dict(kv.split("=", 1) for kv in self.args.server_env)
            server = launcher.start_deepserve(self.args.store, self.out / "server.log", env=env)
        self.stack.callback(server.stop)
        self.doc["server"] = {"url": server.url, "grpc": server.grpc_target, "ready_s": server.ready_s}
        self.note(f"deepserve ready in {server.ready_s:.2f} s at {server.url} (gRPC {server.grpc_target})")
        return server.url, self.args.grpc_url or server.grpc_target, server.process.pid

    def run(self) -> dict[str, Any]:
        url, grpc_url, pid = self._server()
        info = resolve(self.args.model, store=self.args.store, url=url)
        self.doc["task"] = info.task
        formats = ["json", "binary"] if self.args.format == "both" else [self.args.format]
        targets = build_targets(info, url, grpc_url, self.args.protocol, formats, self.shape,
                                server_pid=pid, label=self.args.label)  # fmt: skip
        self._measure_ceiling(info)
        peers = self._start_peers(info, formats, url)
        peer_targets = [t for p in peers for t in p.targets]
        self.results += runner.sweep(
            [*targets, *peer_targets], self.mode, self.levels, self.cfg, self.console
        )
        self._remeasure_ceiling(info)
        if self.args.slo_p99_ms:
            self._slo(targets)
        self._extras(info, url, grpc_url, formats, peers)
        self._compare(peers)
        if self.ceiling:
            for r in self.results:
                r.pct_of_ceiling = 100 * r.items_per_s / self.ceiling.items_per_s
        self.doc["results"] = [r.as_dict() for r in self.results]
        self.doc["notes"] = self.notes
        return self.doc

    def _measure_ceiling(self, info: ModelInfo) -> None:
        if self.args.no_ceiling or info.version_dir is None or info.is_generation:
            why = (
                "asked"
                if self.args.no_ceiling
                else ("generation model" if info.is_generation else "no local store")
            )
            self.note(f"in-process ceiling skipped ({why})")
            return
        with self.console.status("measuring the in-process ceiling ..."):
            self.ceiling = measure_ceiling(
                info,
                batch_sizes=[int(b) for b in self.args.ceiling_batches] if not self.args.quick else [1, 8],
                seconds=0.5 if self.args.quick else 3.0,
                threads=self.args.threads,
                device=self.args.device,
                precision=self.args.precision,
                seq_len=self.args.seq_len,
                pad_to=self.args.pad_to,
            )
        self.doc["ceiling"] = asdict(self.ceiling)
        self.note(
            f"in-process ceiling: {self.ceiling.items_per_s:,.1f} items/s at batch {self.ceiling.best_batch} "
            f"({self.ceiling.runtime})"
        )

    def _remeasure_ceiling(self, info: ModelInfo) -> None:
        """On a shared machine the ceiling drifts: measure it again after the sweep, report the mean."""
        if self.ceiling is None or self.args.quick:
            return
        with self.console.status("measuring the in-process ceiling again ..."):
            a, best = self.args, [self.ceiling.best_batch]
            again = measure_ceiling(info, batch_sizes=best, seconds=3.0, threads=a.threads, device=a.device,
                                    precision=a.precision, seq_len=a.seq_len, pad_to=a.pad_to)  # fmt: skip
        self.ceiling.add_run(again.items_per_s)
        self.doc["ceiling"] = asdict(self.ceiling)
        runs = ", ".join(f"{x:,.1f}" for x in self.ceiling.runs)
        self.note(f"in-process ceiling before/after the sweep: {runs} items/s; using the mean")

    @property
    def peer_names(self) -> list[str]:
        names = list(self.args.compare or [])
        old_flag = ["naive"] if self.args.naive and "naive" not in names else []  # --naive: the old spelling
        return names + old_flag

    def _batching(self, info: ModelInfo, url: str) -> Batching:
        """Peers batch to deepserve's own limit for the model, as served (its config route)."""
        served = int(model_config(url, info.name).get("max_batch_size") or 0)
        return Batching(served or info.max_batch_size or 32, self.args.triton_delay_us)

    def _start_peers(self, info: ModelInfo, formats: list[str], url: str) -> list[PeerServer]:
        """Start the --compare peers on the same file; they stay up for the whole sweep."""
        if not self.peer_names:
            return []
        a = self.args
        batching = self._batching(info, url)
        ctx = PeerContext(info, formats, a.protocol, self.shape, self.out, self.console, self.stack,
                          batching, threads=a.threads, install_tools=not a.no_install)  # fmt: skip
        peers, skipped = start_peers(self.peer_names, ctx)
        for line in [f"{p.name}: {p.note}" for p in peers] + skipped:
            self.note(line)
        self.doc["peers"], self.doc["peers_skipped"] = {p.name: p.note for p in peers}, skipped
        return peers

    def _slo(self, targets: list[Target]) -> None:
        searches = {}
        for target in targets:
            result, measured = runner.slo_search(
                target,
                self.mode,
                self.args.slo_p99_ms,
                self.cfg,
                self.console,
                start=self.levels[0],
                max_level=self.args.slo_max_level,
            )
            for r in measured:
                r.extra["slo_search"] = True
            self.results += measured
            searches[target.label] = {
                "slo_p99_ms": result.slo_p99_ms,
                "goodput": result.goodput,
                "best": asdict(result.best) if result.best else None,
                "tried": [asdict(p) for p in result.tried],
            }
            best = (
                (
                    f"{result.goodput:,.1f} items/s at {self.mode} {result.best.level:g} "
                    f"(p99 {result.best.p99_ms:.1f} ms)"
                )
                if result.best
                else "no level met it"
            )
            self.note(f"SLO p99 <= {result.slo_p99_ms:g} ms, {target.label}: goodput {best}")
        self.doc["slo"] = searches

    def _extras(
        self, info: ModelInfo, url: str, grpc_url: str | None, formats: list[str], peers: list[PeerServer]
    ) -> None:
        if self.args.perf_analyzer:
            from deepserve.bench.perf_analyzer import V2Server, run_perf_analyzer

            v2 = [V2Server(p.name, p.v2_url, p.v2_grpc, tuple(p.v2_formats)) for p in peers
                  if p.v2_url or p.v2_grpc]  # fmt: skip
            a, servers = self.args, ", ".join([self.args.label, *(s.label for s in v2)])
            with self.console.status(f"perf_analyzer: {servers} ..."):
                pa = run_perf_analyzer(info, url, grpc_url, a.protocol, formats, self.mode, self.levels,
                                       self.cfg, self.out, label=a.label, peers=v2)  # fmt: skip
            self.doc["perf_analyzer"] = pa.as_dict()
            self.note(pa.summary())

    def _compare(self, peers: list[PeerServer]) -> None:
        """The side-by-side rows: deepserve's throughput over each peer's, per generator and level."""
        if not peers:
            return
        names = [p.name for p in peers]
        pa_rows = (self.doc.get("perf_analyzer") or {}).get("rows") or []
        rows = compare.build(self.results, pa_rows, self.args.label, names)
        self.doc["comparison"] = [r.as_dict() for r in rows]
        lagging = compare.behind(rows)
        self.note(f"{self.args.label} behind at: {'; '.join(lagging)}" if lagging
                  else f"{self.args.label} ahead of {', '.join(names)} at every level measured")  # fmt: skip
