"""``--profile``: a torch.profiler trace of a few optimizer steps, and the operators that took longest.

The profiler skips ``WAIT`` steps (first-call allocations and lazy initialisation are not the
steady state), warms up for ``WARMUP`` and records ``ACTIVE`` steps; the trace is a Chrome trace
JSON file (open it in chrome://tracing or https://ui.perfetto.dev) and the top operators by self
CPU time (self CUDA time on a GPU) are printed to stderr. A run shorter than the schedule
records what it has.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, schedule

WAIT, WARMUP, ACTIVE = 1, 1, 3
TOP_OPERATORS = 12


class StepProfiler:
    """Context manager; ``step()`` after every optimizer step. ``path`` None: does nothing."""

    def __init__(self, path: Path | None, *, show: bool = True) -> None:
        self.path, self.show = path, show
        self.table = ""
        self._prof: Any = None

    def __enter__(self) -> StepProfiler:
        if self.path is None:
            return self
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        self._prof = profile(
            activities=activities,
            schedule=schedule(wait=WAIT, warmup=WARMUP, active=ACTIVE, repeat=1),
            on_trace_ready=self._ready,
            record_shapes=True,
        )
        self._prof.__enter__()
        return self

    def step(self) -> None:
        if self._prof is not None:
            self._prof.step()

    def _ready(self, prof: Any) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.path))
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        self.table = prof.key_averages().table(sort_by=sort, row_limit=TOP_OPERATORS)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._prof is None:
            return
        self._prof.__exit__(kind, exc, tb)
        self._prof = None
        if kind is None and self.show:
            where = f"profiler trace: {self.path}" if self.table else "profiler: too few steps to record"
            print(f"{where}\n{self.table}", file=sys.stderr)
