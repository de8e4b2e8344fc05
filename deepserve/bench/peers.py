"""`--compare triton,torchserve,naive`: other servers measured beside deepserve in the same run.

Each peer serves the same model file on loopback and is up for the whole run, so its targets join
deepserve's in the one sweep, level by level (a shared machine drifts: what is compared at a level
is measured minutes apart at most), with the same request rows:

- ``triton``: Triton Inference Server through PyTriton, the same model.onnx in ONNX Runtime behind
  Triton's dynamic batcher (deepserve.bench.triton_peer); KServe v2 HTTP and gRPC, the very request
  bytes deepserve gets, and perf_analyzer drives it as it drives deepserve;
- ``torchserve``: TorchServe 0.12 serving the model's .mar (deepserve.bench.torchserve); its own
  /predictions JSON API with the same rows, so only the bench's own generator can drive it;
- ``naive``: a plain FastAPI endpoint, one request -> one ONNX Runtime run (naive_server.py); v2 HTTP.

A peer that cannot run here (a tool missing, a library it cannot load) is skipped with one line
saying why; the run goes on with the others.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from deepserve.bench import launcher
from deepserve.bench.inputs import ModelInfo
from deepserve.bench.sweep import Target
from deepserve.bench.targets import Shape, http_target

PEERS = ("triton", "torchserve", "naive")
NAIVE_LABEL = "naive-fastapi"


def parse_peers(text: str) -> list[str]:
    """``triton,torchserve,naive`` -> the peers in that order (argparse ``type``)."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown peer {unknown[0]!r}: --compare takes a comma-separated list of {', '.join(PEERS)}"
        )
    if not names:
        raise argparse.ArgumentTypeError(f"--compare needs at least one of {', '.join(PEERS)}")
    return list(dict.fromkeys(names))


class PeerSkipped(RuntimeError):
    """The peer cannot run here; the message is the one line the report prints."""


@dataclass(frozen=True)
class Batching:
    """What every batching peer is given: deepserve's own limits for the model, as it serves it."""

    max_batch: int
    delay_us: int  # Triton's max_queue_delay_microseconds


@dataclass
class PeerContext:
    info: ModelInfo
    formats: list[str]
    protocol: str  # http | grpc | both
    shape: Shape
    out: Path
    console: Console
    stack: ExitStack  # a started peer registers its stop here
    batching: Batching
    threads: int | None = None  # ONNX Runtime intra-op threads (naive, triton)
    install_tools: bool = True  # a peer's missing tool (PyTriton) is installed, not skipped


@dataclass
class PeerServer:
    """A started peer: its load targets, and its v2 endpoints when perf_analyzer can drive it."""

    name: str  # the label in tables and plots
    targets: list[Target]
    note: str
    v2_url: str | None = None
    v2_grpc: str | None = None
    v2_formats: list[str] = field(default_factory=list)  # HTTP tensor formats perf_analyzer may use


def needs_onnx_file(ctx: PeerContext, peer: str) -> None:
    info = ctx.info
    if info.version_dir is None or info.is_generation or not (info.version_dir / "model.onnx").is_file():
        raise PeerSkipped(f"--compare {peer} skipped: needs a local store version with model.onnx (--store)")


def needs_http(ctx: PeerContext, peer: str) -> None:
    if ctx.protocol == "grpc":
        raise PeerSkipped(f"--compare {peer} skipped: it speaks HTTP only and this run is --protocol grpc")


def start_naive(ctx: PeerContext) -> PeerServer:
    needs_http(ctx, "naive")
    needs_onnx_file(ctx, "naive")
    assert ctx.info.version_dir is not None
    with ctx.console.status("starting the naive FastAPI baseline ..."):
        server = launcher.start_naive(ctx.info.version_dir, ctx.info.name, ctx.out / "naive.log",
                                      threads=ctx.threads)  # fmt: skip
    ctx.stack.callback(server.stop)
    formats = ctx.formats
    targets = [http_target(ctx.info, server.url, f, ctx.shape, label=NAIVE_LABEL, stats=False,
                           server_pid=server.process.pid) for f in formats]  # fmt: skip
    note = "naive FastAPI endpoint: one request, one ONNX Runtime run on its event loop (HTTP only)"
    return PeerServer(NAIVE_LABEL, targets, note, v2_url=server.url, v2_formats=formats)


def _starters() -> dict[str, Callable[[PeerContext], PeerServer]]:
    from deepserve.bench.torchserve import start_torchserve
    from deepserve.bench.triton_peer import start_triton

    return {"triton": start_triton, "torchserve": start_torchserve, "naive": start_naive}


def start_peers(names: list[str], ctx: PeerContext) -> tuple[list[PeerServer], list[str]]:
    """Start every peer asked for; (the started ones, one line for each skipped one saying why)."""
    started, skipped = [], []
    starters = _starters()
    for name in names:
        try:
            started.append(starters[name](ctx))
        except PeerSkipped as e:
            skipped.append(str(e).splitlines()[0])
        except launcher.ServerStartError as e:
            skipped.append(_start_failed(name, e))
    return started, skipped


def _start_failed(name: str, error: Exception) -> str:
    tail = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
    return f"--compare {name} skipped: it did not start ({tail[-1] if tail else str(error)[:200]})"
