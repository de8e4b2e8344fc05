"""Every Prometheus metric of the server, declared once against an injected registry.

Names follow Prometheus conventions: ``deepserve_`` prefix, base units (seconds, bytes,
ratio), ``_total`` on counters. GPU gauges are filled from NVML at scrape time, only when
``pynvml`` imports and a GPU is present. ``deepserve_build_info`` (value 1) carries what the
process runs as labels, so a query can tell which pods a rollout has reached.

One process (``workers = 1``) keeps its values in memory and renders the injected registry.
Worker processes (``deepserve serve --workers N``) use prometheus-client's multiprocess mode: the
supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before a worker starts, each worker writes its values
into files there, and ``render`` merges every worker's files, so a scrape of any worker is the
whole server and Prometheus sees one target. Counters and histograms add up (a worker that died
keeps its counts in the total); each gauge says how its workers combine (``multiprocess_mode``,
ignored by one process): the sum of the live workers for what they hold (queued, in flight,
sequences, KV cache), the least for model readiness (1 only where every live worker serves it),
the greatest for load times and build info, the latest reading for the GPU (every worker sees the
same device). Multiprocess mode has no callback gauges, no Info and no removal of a series; none
is used here (``deepserve_build_info`` is a gauge, which renders exactly as an Info would).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

import deepserve

log = logging.getLogger(__name__)

# Latency buckets from 0.5 ms (tiny MLP) to 30 s (the default deadline).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self, registry: CollectorRegistry, multiprocess_dir: Path | None = None) -> None:
        """``multiprocess_dir``: this process is one of several workers whose values live there
        (the ``PROMETHEUS_MULTIPROC_DIR`` it was started with); ``render`` merges them all."""
        self.registry = registry
        self._exposed = registry if multiprocess_dir is None else _merged(multiprocess_dir)
        r = registry
        labels = build_labels()
        self.build_info = Gauge(
            "deepserve_build_info", "What this server runs: versions and build", list(labels),
            registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.build_info.labels(**labels).set(1)
        self.requests = Counter(
            "deepserve_requests", "Requests answered, by model, protocol and HTTP-style status code",
            ["model", "protocol", "code"], registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            "deepserve_request_duration_seconds", "End-to-end request latency inside the server",
            ["model", "protocol"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_duration = Histogram(
            "deepserve_queue_duration_seconds", "Time a request waited in the model queue",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.compute_duration = Histogram(
            "deepserve_compute_duration_seconds", "Time one executed batch spent in the model",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "deepserve_batch_size", "Rows per executed batch", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        # how the workers' values combine: see the module docstring (one process ignores the mode)
        self.queue_depth = Gauge(
            "deepserve_queue_depth", "Requests waiting in the model queue", ["model"],
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.inflight = Gauge(
            "deepserve_inflight_requests", "Requests inside the server (queued or computing)", ["model"],
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.model_ready = Gauge(
            "deepserve_model_ready", "1 when the model version serves, else 0", ["model", "version"],
            registry=r, multiprocess_mode="livemin",
        )  # fmt: skip
        self.model_load_seconds = Gauge(
            "deepserve_model_load_seconds", "Time the model version took to load", ["model", "version"],
            registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.model_provider = Gauge(
            "deepserve_model_provider_info", "1 for the execution provider the model version runs on "
            "(TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider, torch-cuda, torch-cpu) "
            "and the device it was placed on (cpu, cuda:0, ...)",
            ["model", "version", "provider", "device"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "deepserve_prompt_tokens", "Prompt tokens processed", ["model"], registry=r
        )
        self.generated_tokens = Counter(
            "deepserve_generated_tokens", "Tokens generated", ["model"], registry=r
        )
        self.time_to_first_token = Histogram(
            "deepserve_time_to_first_token_seconds", "Time from request to its first generated token",
            ["model"], buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.inter_token_latency = Histogram(
            "deepserve_inter_token_latency_seconds", "Time between consecutive generated tokens",
            ["model"], buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.running_sequences = Gauge(
            "deepserve_running_sequences", "Sequences being decoded", ["model"],
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.waiting_sequences = Gauge(
            "deepserve_waiting_sequences", "Sequences waiting to join the decode batch", ["model"],
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.kv_cache_bytes = Gauge(
            "deepserve_kv_cache_bytes", "KV-cache memory in use", ["model"],
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.gpu_utilization = Gauge(
            "deepserve_gpu_utilization_ratio", "GPU utilisation (0-1)", ["gpu"],
            registry=r, multiprocess_mode="livemostrecent",
        )  # fmt: skip
        self.gpu_memory_used = Gauge(
            "deepserve_gpu_memory_used_bytes", "GPU memory in use", ["gpu"],
            registry=r, multiprocess_mode="livemostrecent",
        )  # fmt: skip
        self.gpu_memory_total = Gauge(
            "deepserve_gpu_memory_total_bytes", "GPU memory in total", ["gpu"],
            registry=r, multiprocess_mode="livemostrecent",
        )  # fmt: skip
        self._nvml: Any = _open_nvml()
        self._request_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._inflight_children: dict[str, Any] = {}

    def inflight_child(self, model: str) -> Any:
        found = self._inflight_children.get(model)
        if found is None:
            found = self._inflight_children[model] = self.inflight.labels(model)
        return found

    def request_children(self, model: str, protocol: str, code: str) -> tuple[Any, Any]:
        """(requests counter, duration histogram) children, cached: ``labels()`` locks and
        builds a key on every call, which shows on the hot path. Label values are bounded
        (served models x protocols x status codes)."""
        key = (model, protocol, code)
        found = self._request_children.get(key)
        if found is None:
            found = (
                self.requests.labels(model, protocol, code),
                self.request_duration.labels(model, protocol),
            )
            self._request_children[key] = found
        return found

    def refresh_gpu(self) -> None:
        """Read NVML once (called at scrape time, so an idle server polls nothing)."""
        nvml = self._nvml
        if nvml is None:
            return
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                util = nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                self.gpu_utilization.labels(str(index)).set(util.gpu / 100.0)
                self.gpu_memory_used.labels(str(index)).set(mem.used)
                self.gpu_memory_total.labels(str(index)).set(mem.total)
        except Exception as exc:  # NVML errors must never fail a scrape
            log.warning("NVML read failed, GPU metrics stale: %s", exc)

    def render(self) -> bytes:
        self.refresh_gpu()
        return generate_latest(self._exposed)


def _merged(multiprocess_dir: Path) -> CollectorRegistry:
    """A registry that reads every worker's values from ``multiprocess_dir`` at each scrape."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise RuntimeError(
            f"metrics of several workers need PROMETHEUS_MULTIPROC_DIR={multiprocess_dir} set before "
            "prometheus_client is imported (the supervisor starts each worker with it)"
        )
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
    return merged


def build_labels() -> dict[str, str]:
    """The build_info labels, read from installed package metadata: nothing is imported (torch
    takes seconds) and an absent package is an empty label, which PromQL treats as no label."""
    ort = _dist_version("onnxruntime-gpu")
    return {
        "version": deepserve.__version__,
        "revision": _revision(),
        "python": platform.python_version(),
        # the CUDA and the CPU build ship the same `onnxruntime` import package (see pyproject.toml)
        "onnxruntime": ort or _dist_version("onnxruntime"),
        "onnxruntime_build": "gpu" if ort else "cpu" if _dist_version("onnxruntime") else "",
        "torch": _dist_version("torch"),  # its local part says the build: 2.13.0+cpu, +cu128
    }


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _revision() -> str:
    """The git commit the server was built from, where the build recorded it: the image's
    ``DEEPSERVE_REVISION`` (stamped at build time, not a setting), or pip's record of a
    ``pip install git+URL@COMMIT``. A working tree's commit says nothing of its local changes: none."""
    stamped = os.environ.get("DEEPSERVE_REVISION", "")
    if stamped:
        return stamped
    try:
        direct_url = importlib.metadata.distribution("deepserve").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return ""
    vcs = json.loads(direct_url or "{}").get("vcs_info", {})
    return str(vcs.get("commit_id", ""))


def _open_nvml() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
    except Exception:  # no driver / no GPU: GPU metrics are simply absent
        return None
    return pynvml
