"""One load level, measured properly: warm-up, K windows, agreement, server stats, CPU.

``measure_level`` drives a target at one concurrency (closed loop) or one request rate (Poisson,
open loop): the warm-up is not counted, the measured phase is bounded by time and by requests,
and the level's figures come with the spread across windows and whether they agree.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from deepserve.bench import stats
from deepserve.bench.samples import OK_STATUSES, Recorder, StopRule
from deepserve.bench.server_stats import get_json, stats_delta

_clock = time.perf_counter


@dataclass
class RunConfig:
    warmup_s: float = 2.0
    duration_s: float = 10.0
    windows: int = 3
    max_requests: int = 100_000
    tolerance: float = 0.1
    min_per_window: int = 0  # answers per client each window must be able to hold (extends duration)
    max_duration_s: float = 0.0  # the longest a measured phase may be extended to


@dataclass
class Target:
    """Something to load: how to reach it and the pre-encoded requests to send."""

    label: str  # e.g. "deepserve http/binary", "naive-fastapi http/json"
    kind: str  # "http" | "grpc" | "sse"
    requests: list[bytes]
    host: str = "127.0.0.1"
    port: int = 0  # the HTTP port (also where /stats is read)
    grpc_target: str | None = None
    model: str = ""
    items_per_request: int = 1
    stats: bool = True  # read /v2/models/{m}/stats around the measured phase
    server_pid: int | None = None


@dataclass
class LevelResult:
    target: str
    mode: str  # "concurrency" | "rate"
    level: float
    completed: int
    duration_s: float
    rps: float
    items_per_s: float
    latency: dict[str, float]
    errors: dict[str, int]
    error_samples: dict[str, str]
    stable: bool
    spread_rps: float
    spread_p50: float
    unstable_reason: str
    windows: list[dict[str, float]]
    client_cpu_pct: float
    server_cpu_pct: float | None = None
    server: dict[str, float] | None = None
    generation: dict[str, float] | None = None
    pct_of_ceiling: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LevelResult:
        nan = float("nan")
        d = {"windows": [], "error_samples": {}, **d}  # a page's compact copy keeps neither
        d["latency"] = {k: nan if v is None else v for k, v in d["latency"].items()}
        return cls(**d)


def _loader(target: Target) -> Any:
    if target.kind == "http":
        from deepserve.bench.http_load import HttpLoad

        return HttpLoad(target.host, target.port, target.requests)
    if target.kind == "grpc":
        from deepserve.bench.grpc_load import AioGrpcLoad

        assert target.grpc_target, "a gRPC target needs grpc_target host:port"
        return AioGrpcLoad(target.grpc_target, target.requests)
    if target.kind == "sse":
        from deepserve.bench.sse_load import SseLoad

        return SseLoad(target.host, target.port, target.requests)
    raise ValueError(f"unknown target kind {target.kind!r}")


def _cpu_now(pid: int | None) -> tuple[float, float, float]:
    from deepserve.bench.launcher import process_tree_cpu_seconds

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return _clock(), ru.ru_utime + ru.ru_stime, process_tree_cpu_seconds(pid) if pid else 0.0


async def _ticker(load: Any, on_tick: Callable[[int], None]) -> None:
    while True:
        on_tick(len(load.rec.ends))
        await asyncio.sleep(0.5)


async def measure_level(
    target: Target, mode: str, level: float, cfg: RunConfig, on_tick: Callable[[int], None] | None = None
) -> LevelResult:
    load = _loader(target)
    ticker = asyncio.ensure_future(_ticker(load, on_tick)) if on_tick else None
    measure_from = _clock() + cfg.warmup_s
    rule = stop_rule(cfg, mode, level, measure_from)
    path = f"/v2/models/{target.model}/stats"
    marks: dict[str, Any] = {}

    async def at_measure_start() -> None:
        await asyncio.sleep(max(0.0, measure_from - _clock()))
        marks["cpu0"] = _cpu_now(target.server_pid)
        if target.stats:
            marks["stats0"] = await get_json(target.host, target.port, path)

    mark_task = asyncio.ensure_future(at_measure_start())
    if mode == "concurrency":
        rec = await load.run_closed(int(level), rule)
    else:
        rec = await load.run_open(float(level), rule)
    cpu1 = _cpu_now(target.server_pid)
    if ticker:
        ticker.cancel()
    await mark_task
    after = await get_json(target.host, target.port, path) if target.stats else None
    result = summarize(target, mode, level, rec, _span_end(rec, rule), cfg)
    t0, c0, s0 = marks["cpu0"]
    result.client_cpu_pct = 100 * (cpu1[1] - c0) / max(cpu1[0] - t0, 1e-9)
    if target.server_pid:
        result.server_cpu_pct = 100 * (cpu1[2] - s0) / max(cpu1[0] - t0, 1e-9)
    if target.stats:
        result.server = stats_delta(marks.get("stats0"), after, target.model)
    return result


def stop_rule(cfg: RunConfig, mode: str, level: float, measure_from: float) -> StopRule:
    """Measure ``duration_s``, extended (up to ``max_duration_s``) until every window can hold
    ``min_per_window`` answers per client: a batching server answers in bursts of a batch."""
    per_window = cfg.min_per_window * (int(level) if mode == "concurrency" else 1)
    return StopRule(measure_from, measure_from + cfg.duration_s, cfg.max_requests,
                    min_measured=per_window * cfg.windows,
                    hard_stop=measure_from + max(cfg.duration_s, cfg.max_duration_s))  # fmt: skip


def _span_end(rec: Recorder, rule: StopRule) -> float:
    """End of the measured phase: when the rule fired, or the completion that reached the request bound."""
    measured = sorted(e for e in rec.ends if e >= rec.measure_from)
    if len(measured) >= rule.max_measured:
        return measured[rule.max_measured - 1]
    return rule.stopped_at if rule.stopped_at is not None else rule.stop_at


def summarize(
    target: Target, mode: str, level: float, rec: Recorder, end: float, cfg: RunConfig
) -> LevelResult:
    start = rec.measure_from
    ends, lats, codes = rec.window(start, end)
    span = max(end - start, 1e-9)
    wins = stats.split_windows(ends, lats, start, end, cfg.windows)
    agree = stats.windows_agree(wins, cfg.tolerance)
    errors = {k: v for k, v in sorted(codes.items()) if k not in OK_STATUSES}
    return LevelResult(
        target=target.label,
        mode=mode,
        level=level,
        completed=len(lats),
        duration_s=span,
        rps=len(lats) / span,
        items_per_s=len(lats) * target.items_per_request / span,
        latency=stats.latency_summary(lats),
        errors=errors,
        error_samples={k: v for k, v in rec.first_error.items() if k in errors},
        stable=agree.stable and not errors,
        spread_rps=agree.throughput_spread,
        spread_p50=agree.p50_spread,
        unstable_reason=agree.reason if agree.reason or not errors else f"{sum(errors.values())} errors",
        windows=[{"rps": w.throughput, "p50_ms": w.p50_ms, "p99_ms": w.p99_ms} for w in wins],
        client_cpu_pct=0.0,
        generation=_generation(rec, start, end, span) if rec.streams else None,
    )


def _generation(rec: Recorder, start: float, end: float, span: float) -> dict[str, float]:
    inside = [s for s in rec.streams if start <= s[0] <= end]
    ttft = [s[1] for s in inside]
    gaps = [g for s in inside for g in s[2]]
    return {
        "ttft_p50_ms": stats.percentile(ttft, 50) * 1e3,
        "ttft_p99_ms": stats.percentile(ttft, 99) * 1e3,
        "itl_p50_ms": stats.percentile(gaps, 50) * 1e3,
        "itl_p99_ms": stats.percentile(gaps, 99) * 1e3,
        "tokens_per_s": sum(s[3] for s in inside) / span,
        "streams": float(len(inside)),
    }


def run_async(coro: Any, *, fast_loop: bool = True) -> Any:
    """Run a coroutine on a fresh event loop (uvloop when installed and wanted)."""
    factory = None
    if fast_loop:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def measure(
    target: Target, mode: str, level: float, cfg: RunConfig, on_tick: Callable[[int], None] | None = None
) -> LevelResult:
    """Blocking wrapper; gRPC runs on the standard loop (grpc.aio's own polling expects it)."""
    return run_async(measure_level(target, mode, level, cfg, on_tick), fast_loop=target.kind != "grpc")
