"""``deepserve serve --workers N``: N server processes on the same HTTP and gRPC ports.

One server process answers on one event loop, and on a small model that loop (decoding, routing,
encoding) is what limits throughput, long before the model does: a second process on a second
core serves about as much again. Workers are for that case: small models (tabular, small CNNs,
embeddings) and many clients on a box with cores to spare. They are not for one big model on one
GPU: every worker loads its own copy of every model (N times the memory, N processes contending
for one device), and the GPU, not the loop, is what limits it; serve that with one worker and
scale with replicas.

The supervisor is this process. It loads no model; it

- checks and holds the ports (``service.ports.reserve``): a port any other socket holds fails
  with one line before anything starts, a foreign ``SO_REUSEPORT`` server included;
- copies a store in object storage into the cache once, so the workers find it there;
- divides the cores: each worker's model runtimes get ``cores // N`` intra-op threads and
  ``codec_threads // N`` codec threads, unless ``DEEPSERVE_THREADS`` / ``DEEPSERVE_CODEC_THREADS``
  are set, which then count for each worker;
- starts the workers as fresh interpreters (``python -m deepserve.service.worker``; no fork of a
  process with threads), with prometheus-client's multiprocess folder in a run folder of its own
  (``service.worker_state``), removed when it exits;
- on SIGTERM / SIGINT marks the whole server not ready, passes the signal to every worker (each
  drains as one process does) and exits 0 once all have, or 1 if one had to be killed after
  ``drain_timeout_s`` plus a grace or exited with an error;
- restarts a worker that dies after it started serving (a crash, the OOM killer), after a pause
  that doubles from 0.5 s to 30 s while workers keep dying young and starts again at 0.5 s
  once one has served a minute; meanwhile the server reports not ready (the restarted worker
  would answer 503 on its share of the connections while it loads). A worker that exits before it
  ever listened (it cannot import, cannot bind) would only do so again: the supervisor stops
  them all, with that worker's exit code, as gunicorn does for a worker that fails to boot.

Refused with ``--workers`` > 1: the model management API (a load or unload would reach only the
worker that answered it). Per worker, not per server: ``/v2/models/.../stats`` (the statistics
of the worker that answered) and the TorchServe metrics a hosted handler records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from deepserve.handlers.runtime import default_threads
from deepserve.service import ports
from deepserve.service.settings import Settings
from deepserve.service.worker_state import WorkerBoard, WorkerSpec, WorkerState

log = logging.getLogger("deepserve")

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STEADY_S = 60.0  # a worker that served this long died of something new: restart it soon again
KILL_GRACE_S = 10.0  # after drain_timeout_s, before a worker that has not stopped is killed


def run_workers(settings: Settings) -> int:
    """Supervise ``settings.workers`` workers until SIGTERM / SIGINT; the exit code."""
    if settings.enable_management:
        log.error("DEEPSERVE_ENABLE_MANAGEMENT needs --workers 1: a model load or unload would reach only "
                  "the worker that answered it")  # fmt: skip
        return 2
    try:
        held, settings = _reserve_ports(settings)
    except OSError as exc:
        log.error("%s", ports.taken(exc))
        return 1
    run_dir = Path(tempfile.mkdtemp(prefix="deepserve-workers-"))
    try:
        _prefetch_remote(settings)
        per_worker = worker_settings(settings, default_threads())
        log.info("serving %s with %d workers (%s runtime threads, %d codec threads each): %s",
                 settings.model_store, settings.workers, per_worker.threads, per_worker.codec_threads,
                 ports.served_at(settings))  # fmt: skip
        return asyncio.run(Supervisor(per_worker, run_dir).run())
    finally:
        for sock in held:
            sock.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def worker_settings(settings: Settings, cores: int) -> Settings:
    """The settings each worker serves with: the cores divided among the workers, so that N
    processes do not each start a thread per core (threads set explicitly are each worker's)."""
    given, workers = settings.model_fields_set, settings.workers
    if cores < workers:
        log.warning("%d workers on %d cores: more processes than cores only adds switching", workers, cores)
    update: dict[str, int] = {}
    if "threads" not in given:
        update["threads"] = max(1, cores // workers)
    if "codec_threads" not in given:
        update["codec_threads"] = max(1, settings.codec_threads // workers)
    return settings.model_copy(update=update)


def _reserve_ports(settings: Settings) -> tuple[list[socket.socket], Settings]:
    """The HTTP and gRPC ports checked and held (OSError when taken), and the settings with the
    ports the kernel picked where they asked for 0."""
    held, http_port = ports.reserve(settings.host, settings.http_port, "HTTP")
    grpc_port = settings.grpc_port
    if settings.enable_grpc:
        try:
            grpc_held, grpc_port = ports.reserve(settings.host, settings.grpc_port, "gRPC")
        except OSError:
            for sock in held:
                sock.close()
            raise
        held += grpc_held
    return held, settings.model_copy(update={"http_port": http_port, "grpc_port": grpc_port})


def _prefetch_remote(settings: Settings) -> None:
    """A store in object storage, copied into the cache once before the workers start: each would
    download every version itself, and they would race to rename their copies into place. A
    version that fails here fails in the workers too, each saying why."""
    if settings.model_store_uri is None:
        return
    from deepserve.remote_store import RemoteStore, RemoteStoreError

    store = RemoteStore(settings.model_store_uri, settings.model_store)
    try:
        listed = store.refresh()
    except RemoteStoreError as exc:
        log.error("%s", exc)
        return
    wanted = settings.load_models
    for name, versions in listed.items():
        for version in versions if wanted is None or name in wanted else []:
            try:
                store.fetch(name, version)
            except RemoteStoreError as exc:
                log.error("model %s version %s cannot be copied: %s", name, version, exc)


class Supervisor:
    """Runs the workers of one server and keeps them running until told to stop."""

    def __init__(self, settings: Settings, run_dir: Path) -> None:
        self.settings, self.run_dir = settings, run_dir
        self.count = settings.workers
        (run_dir / "metrics").mkdir()
        self.board = WorkerBoard.create(run_dir / "board", self.count)
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._codes: dict[int, int] = {}  # how each worker ended, once stopping
        self._boot_failure: int | None = None
        self._stop = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        slots = [asyncio.create_task(self._keep_running(i)) for i in range(1, self.count + 1)]
        await self._stop.wait()
        self.board.begin_drain()  # every worker says not ready from now, signalled or not yet
        for process in list(self._processes.values()):
            _signal(process, signal.SIGTERM)
        _, late = await asyncio.wait(slots, timeout=self.settings.drain_timeout_s + KILL_GRACE_S)
        if late:
            for index, process in list(self._processes.items()):
                log.error("worker %d (pid %d) did not stop in time: killed", index, process.pid)
                _signal(process, signal.SIGKILL)
            await asyncio.wait(late)
        self.board.close()
        return self._exit_code()

    def _exit_code(self) -> int:
        if self._boot_failure is not None:
            return self._boot_failure
        failed = {i: code for i, code in sorted(self._codes.items()) if code != 0}
        for index, code in failed.items():
            log.error("worker %d %s", index, _ended(code))
        if not failed:
            log.info("all %d workers stopped", self.count)
        return 1 if failed else 0

    async def _keep_running(self, index: int) -> None:
        try:
            await self._supervise(index)
        except Exception:  # the worker could not even be started: nothing would run it
            log.exception("worker %d cannot be started: stopping the server", index)
            self._boot_failure = 1
            self._stop.set()

    async def _supervise(self, index: int) -> None:
        """Worker ``index``: started, and restarted when it dies, until the server stops."""
        pause = BACKOFF_FIRST_S
        while not self._stop.is_set():
            started = time.monotonic()
            process = await self._spawn(index)
            code = await process.wait()
            self._processes.pop(index, None)
            booted = self._reap(index, process.pid)
            if self._stop.is_set():  # a worker stopped before it could take the signal stopped too
                self._codes[index] = 0 if not booted and code in _STOP_CODES else code
                return
            if not booted:
                log.error("worker %d %s before it served: stopping the server", index, _ended(code))
                self._boot_failure = code if code > 0 else 1
                self._stop.set()
                return
            pause = BACKOFF_FIRST_S if time.monotonic() - started > STEADY_S else pause
            log.error(
                "worker %d (pid %d) %s; restarting it in %.1f s", index, process.pid, _ended(code), pause
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), pause)
            pause = min(pause * 2, BACKOFF_MAX_S)

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        self.board.set(index, WorkerState.STARTING)
        spec = WorkerSpec(index, self.count, self.run_dir)
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(spec.metrics_dir)}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "deepserve.service.worker", stdin=asyncio.subprocess.PIPE, env=env
        )
        self._processes[index] = process
        line = json.dumps({"settings": self.settings.model_dump(mode="json"), "worker": spec.to_json()})
        assert process.stdin is not None  # stdin=PIPE
        process.stdin.write(line.encode() + b"\n")  # the pipe stays open: its end is the worker's signal
        with contextlib.suppress(ConnectionError):  # it died already: its exit code says why
            await process.stdin.drain()
        if self._stop.is_set():  # asked to stop while it was starting
            _signal(process, signal.SIGTERM)
        return process

    def _reap(self, index: int, pid: int) -> bool:
        """After worker ``index`` (``pid``) exited: its live gauges dropped from the merged metrics
        (its counts stay in the totals), its slot not ready. Whether it had started serving."""
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, str(self.run_dir / "metrics"))  # type: ignore[no-untyped-call]
        booted = self.board.state(index) != WorkerState.STARTING
        self.board.set(index, WorkerState.STARTING)
        return booted


_STOP_CODES = (0, -signal.SIGTERM, -signal.SIGINT)


def _signal(process: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)


def _ended(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
