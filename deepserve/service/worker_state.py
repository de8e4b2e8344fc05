"""What the processes of ``deepserve serve --workers N`` share: a run folder and a board in it.

The supervisor makes the run folder (a fresh temporary directory, removed when it exits) and
hands each worker a ``WorkerSpec`` naming it. In it:

- ``metrics/``: prometheus-client's multiprocess folder (``PROMETHEUS_MULTIPROC_DIR``), where
  every worker's metric values live, so a scrape of any worker returns all of them combined;
- ``board``: one byte per worker (its ``WorkerState``) and one for the supervisor (draining),
  in a file every process maps into memory. A worker writes its own byte when its state changes;
  readiness reads them all (no system call), so any worker answers for the whole server: ready
  only while every worker is, not ready from the moment the supervisor begins to drain.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any


class WorkerState(IntEnum):
    STARTING = 0  # spawned (or waiting to be restarted), not yet listening
    LOADING = 1  # listening; its models are loading
    FAILED = 2  # loaded, but not ready (a model failed to load, or the store could not be read)
    READY = 3
    DRAINING = 4


SAYS = {
    WorkerState.STARTING: "starting",
    WorkerState.LOADING: "loading its models",
    WorkerState.FAILED: "not ready (see its log)",
    WorkerState.READY: "ready",
    WorkerState.DRAINING: "draining",
}


@dataclass(frozen=True)
class WorkerSpec:
    """Which worker a process is (1..workers) and where the run folder is."""

    index: int
    workers: int
    run_dir: Path

    @property
    def metrics_dir(self) -> Path:
        return self.run_dir / "metrics"

    @property
    def board_path(self) -> Path:
        return self.run_dir / "board"

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "workers": self.workers, "run_dir": str(self.run_dir)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerSpec:
        return cls(int(data["index"]), int(data["workers"]), Path(data["run_dir"]))


class WorkerBoard:
    """The board of a run: byte 0 is the supervisor's (1 = draining), byte ``i`` worker ``i``'s."""

    def __init__(self, path: Path, workers: int) -> None:
        self.workers = workers
        with path.open("r+b") as file:  # the mapping outlives the file object
            self._map = mmap.mmap(file.fileno(), workers + 1)

    @classmethod
    def create(cls, path: Path, workers: int) -> WorkerBoard:
        path.write_bytes(bytes(workers + 1))  # every worker STARTING, not draining
        return cls(path, workers)

    def set(self, index: int, state: WorkerState) -> None:
        self._map[index] = state

    def state(self, index: int) -> WorkerState:
        return WorkerState(self._map[index])

    def begin_drain(self) -> None:
        self._map[0] = 1

    @property
    def draining(self) -> bool:
        return self._map[0] != 0

    def first_not_ready(self, besides: int = 0) -> tuple[int, WorkerState] | None:
        """The first worker other than ``besides`` that is not ready, and its state; None when
        every one is."""
        for index in range(1, self.workers + 1):
            state = self._map[index]
            if index != besides and state != WorkerState.READY:
                return index, WorkerState(state)
        return None

    def close(self) -> None:
        self._map.close()
