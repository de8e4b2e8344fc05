"""The in-process ceiling: the model file the server runs, called directly at its best batch size.

Opened through ``handlers.runtime`` (the server's own runtime choice) when that module exists, else
with ONNX Runtime on ``model.onnx`` directly. No HTTP, no queue: the items/s it reaches is what
the hardware can do, and every served figure is reported as a percentage of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from deepserve.bench.codec import Sample
from deepserve.bench.inputs import ModelInfo, make_samples

Runner = Callable[[dict[str, np.ndarray]], object]


@dataclass
class Ceiling:
    items_per_s: float
    best_batch: int
    runtime: str
    by_batch: dict[int, float] = field(default_factory=dict)  # batch size -> items/s
    runs: list[float] = field(default_factory=list)  # best items/s of each measurement (before / after)

    def add_run(self, items_per_s: float) -> None:
        """Fold in a re-measurement at the best batch (e.g. after the sweep, on a shared machine)."""
        self.runs.append(items_per_s)
        self.items_per_s = sum(self.runs) / len(self.runs)


def open_runner(
    info: ModelInfo, threads: int | None = None, *, device: str = "cpu", precision: str | None = None
) -> tuple[Runner, str]:
    """(run(feeds) -> outputs, description), the way the server opens the same version."""
    assert info.version_dir is not None
    from deepserve.handlers.runtime import open_runtime, select_variant
    from deepserve.store import ModelSpec

    spec = ModelSpec.read(info.version_dir)
    variant = select_variant(spec, device=device, precision=precision, version_dir=info.version_dir)
    runtime = open_runtime(info.version_dir, variant, device=device, threads=threads)
    return runtime.run, f"{variant.file}: {runtime.describe()}"


def stack(samples: Sequence[Sample]) -> Sample:
    """Concatenate requests into one batch; token inputs are right-padded to the longest."""
    out: Sample = {}
    for name in samples[0]:
        parts = [s[name] for s in samples]
        if parts[0].ndim == 2 and parts[0].dtype == np.int64:
            width = max(p.shape[1] for p in parts)
            parts = [np.pad(p, ((0, 0), (0, width - p.shape[1]))) for p in parts]
        out[name] = np.concatenate(parts, axis=0)
    return out


def measure_ceiling(
    info: ModelInfo,
    *,
    batch_sizes: Sequence[int] = (1, 8, 16, 32, 64),
    seconds: float = 2.0,
    threads: int | None = None,
    device: str = "cpu",
    precision: str | None = None,
    seq_len: int | None = None,
    pad_to: int | None = None,
) -> Ceiling:
    """Best items/s over ``batch_sizes`` (capped at the model's max batch size).

    ``seq_len`` / ``pad_to``: the same token layout as the requests of the run (text models).
    """
    run, describe = open_runner(info, threads, device=device, precision=precision)
    cap = info.max_batch_size or max(batch_sizes)
    sizes = sorted({min(b, cap) for b in batch_sizes})
    pool = make_samples(info, max(sizes) * 2, seed=1, seq_len=seq_len, pad_to=pad_to)
    result = Ceiling(0.0, 0, describe)
    for b in sizes:
        batches = [stack(pool[i : i + b]) for i in (0, b)]
        run(batches[0])  # warm-up: first-run allocations are not the steady state
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or done == 0:
            run(batches[done % 2])
            done += 1
        result.by_batch[b] = done * b / (time.perf_counter() - t0)
        if result.by_batch[b] > result.items_per_s:
            result.items_per_s, result.best_batch = result.by_batch[b], b
    result.runs.append(result.items_per_s)
    return result
