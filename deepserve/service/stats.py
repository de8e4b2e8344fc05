"""Per-model-version statistics in the shape of Triton's statistics extension.

perf_analyzer reads these: ``queue`` is counted for every request,
and the three ``compute_*`` counts are bumped once per execution so their deltas match.
Updated only from the event loop (the batcher's owner task and ``service.call``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

STAT_NAMES = (
    "success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss",
)  # fmt: skip


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class ModelStatistics:
    name: str
    version: str
    inference_count: int = 0  # batch rows served
    execution_count: int = 0  # batches executed
    last_inference_ms: int = 0
    durations: dict[str, Duration] = field(default_factory=lambda: {n: Duration() for n in STAT_NAMES})
    batch_stats: dict[int, list[Duration]] = field(default_factory=dict)

    def record_execution(self, rows: int, infer_ns: int) -> None:
        self.execution_count += 1
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)
        self.durations["compute_infer"].add(infer_ns)
        self.durations["compute_input"].add(0)
        self.durations["compute_output"].add(0)
        per_size = self.batch_stats.setdefault(rows, [Duration(), Duration(), Duration()])
        per_size[1].add(infer_ns)
        per_size[0].add(0)
        per_size[2].add(0)

    def add_io_time(self, input_ns: int, output_ns: int) -> None:
        """Pre/postprocessing time of one request, without bumping counts (see module doc)."""
        self.durations["compute_input"].ns += input_ns
        self.durations["compute_output"].ns += output_ns

    def as_json(self) -> dict[str, Any]:
        def pair(d: Duration) -> dict[str, int]:
            return {"count": d.count, "ns": d.ns}

        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {n: pair(d) for n, d in self.durations.items()},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": pair(ds[0]),
                    "compute_infer": pair(ds[1]),
                    "compute_output": pair(ds[2]),
                }
                for size, ds in sorted(self.batch_stats.items())
            ],
        }
