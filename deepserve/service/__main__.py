"""``deepserve serve``: HTTP (uvicorn) and gRPC in one process, on one event loop.

SIGTERM / SIGINT: readiness turns false and new requests get 503 at once, in-flight work
(streams included) finishes within ``drain_timeout_s``, then the process exits 0.

``--workers N`` (``DEEPSERVE_WORKERS``): a supervisor (``service.workers``) checks and holds the
ports, then runs N such processes (``run_worker``), each serving the same ports with its own
event loop and models.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import ssl
import sys
from collections.abc import Generator, Sequence
from typing import Any

import uvicorn
from pydantic import ValidationError

from deepserve.service import heap
from deepserve.service.app import create_app
from deepserve.service.dataplane import DataPlane
from deepserve.service.devices import startup_problem
from deepserve.service.grpc_server import GrpcServer, create_grpc_server
from deepserve.service.grpc_service import InferenceServicer
from deepserve.service.logs import configure_logging
from deepserve.service.ports import bind_listeners, served_at, taken
from deepserve.service.settings import Settings
from deepserve.service.worker_state import WorkerSpec

log = logging.getLogger("deepserve")
BACKLOG = 4096  # connections the kernel queues before accept: bursts of new clients are not refused


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: ``serve`` below owns SIGTERM (exit 0 after draining)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    # str, not Path: a Path folds s3://bucket/key into s3:/bucket/key
    parser.add_argument("--store", help="model store: a folder, or an s3://, gs://, https:// URI "
                        "(DEEPSERVE_MODEL_STORE)")  # fmt: skip
    parser.add_argument("--host", help="bind address (DEEPSERVE_HOST, default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, help="HTTP port (DEEPSERVE_HTTP_PORT, default 8000)")
    parser.add_argument(
        "--grpc-port", type=int, help="gRPC port (DEEPSERVE_GRPC_PORT, default 8001; 0 = off)"
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--workers", type=_at_least_one, help="server processes sharing the ports, for "
                        "small models and many clients (DEEPSERVE_WORKERS, default 1)")  # fmt: skip


def _at_least_one(text: str) -> int:
    count = int(text) if text.strip().isdigit() else 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of processes, 1 or more")
    return count


def settings_from(args: argparse.Namespace) -> Settings:
    """Environment first, then command-line flags that were given."""
    flags = {"model_store": args.store, "host": args.host, "http_port": args.http_port,
             "grpc_port": args.grpc_port, "log_level": args.log_level, "workers": args.workers}  # fmt: skip
    given = {k: v for k, v in flags.items() if v is not None}
    if given.get("grpc_port") == 0:
        given["enable_grpc"] = False
    try:
        settings = Settings(**given)
    except ValidationError as exc:  # a bad DEEPSERVE_* value: one line naming it, exit 2, no traceback
        print(f"deepserve: {settings_error(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    missing_gpu = startup_problem(settings.devices)  # a GPU the node lacks: the same one line, exit 2
    if missing_gpu is not None:
        print(f"deepserve: {missing_gpu}", file=sys.stderr)
        raise SystemExit(2)
    return settings


def settings_error(exc: ValidationError) -> str:
    """``DEEPSERVE_DEVICES: bad device 'gpu7': ...`` for each setting pydantic refused, joined by '; '."""
    parts = []
    for error in exc.errors():
        name = "DEEPSERVE_" + str(error["loc"][0]).upper() if error["loc"] else "settings"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{name}: {message} (got {error.get('input')!r})")
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    from deepserve.imports.__main__ import add_import_arguments

    parser = argparse.ArgumentParser(
        prog="deepserve serve",
        description="Serve a model store over HTTP and gRPC, and beside it any model files (.onnx, .pt, "
        ".pt2), Hugging Face folders, TorchServe .mar archives or Triton repositories given as SOURCE.",
    )
    parser.add_argument("sources", nargs="*", metavar="SOURCE",
                        help="a model file, folder, archive or repository to serve directly")  # fmt: skip
    add_serve_arguments(parser)
    parser.add_argument("--name", help="the model name of a single SOURCE (default: from the source)")
    add_import_arguments(parser)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    settings = settings_from(args)
    if not args.sources:
        return run(settings)
    return _run_with_sources(args, settings)


def _run_with_sources(args: argparse.Namespace, settings: Settings) -> int:
    from deepserve.imports import ImportOptions, SourceError
    from deepserve.remote_store import RemoteStoreError
    from deepserve.service.sources import sources_store, store_models

    configure_logging(settings)  # the imports log too
    opts = ImportOptions(store=settings.model_store, name=args.name, task=args.task, labels=args.labels,
                         handler=args.handler, runtime=args.runtime)  # fmt: skip
    try:
        taken = store_models(settings.model_store, settings.model_store_uri)
        with sources_store(args.sources, opts, taken, cache=settings.store_cache) as extra:
            stores = [extra, *settings.extra_model_stores]
            return run(settings.model_copy(update={"extra_model_stores": stores}))
    except (SourceError, RemoteStoreError) as exc:
        print(f"deepserve serve: {exc}", file=sys.stderr)
        return 2


def run(settings: Settings) -> int:
    import prometheus_client

    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created doubles scrapes
    configure_logging(settings)
    refused = _check_store(settings)
    if refused:
        return refused
    if settings.workers > 1:
        from deepserve.service.workers import run_workers

        return run_workers(settings)
    return _serve_here(settings, None)


def run_worker(settings: Settings, worker: WorkerSpec) -> int:
    """One worker of ``--workers``: its supervisor checked the store and holds the ports."""
    import prometheus_client

    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    configure_logging(settings)
    return _serve_here(settings, worker)


def _serve_here(settings: Settings, worker: WorkerSpec | None) -> int:
    import uvloop  # comes with uvicorn[standard]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(settings, worker))


def _check_store(settings: Settings) -> int:
    """0 when the store can be served, else 2 with one line that says why."""
    uri = settings.model_store_uri
    if uri is not None:  # listed now: wrong credentials or a wrong URI are one line, before anything starts
        from deepserve.remote_store import RemoteStore, RemoteStoreError

        try:
            found = RemoteStore(uri, settings.model_store).refresh()
            if not found and not settings.extra_model_stores:
                raise RemoteStoreError(f"{uri} holds no <name>/<version>/model.json: check the URI")
        except RemoteStoreError as exc:
            log.error("%s", exc)
            return 2
        log.info("model store %s: %d models, copied into %s as they load", uri, len(found),
                 settings.model_store)  # fmt: skip
    elif not settings.model_store.is_dir() and not settings.extra_model_stores:
        log.error(
            "model store %s does not exist: pass --store (or DEEPSERVE_MODEL_STORE), or build one with "
            "`deepserve up` / `deepserve store build --store %s`", settings.model_store, settings.model_store
        )
        return 2
    return 0


async def serve(settings: Settings, worker: WorkerSpec | None = None) -> int:
    """``worker``: one of ``--workers``, on ports shared with its siblings (``SO_REUSEPORT``)."""
    share = worker is not None
    try:
        http_sockets = bind_listeners(settings.host, settings.http_port, BACKLOG, share=share)
    except OSError as exc:
        return _cannot_bind(exc)
    try:
        management_sockets = _ManagementServer.bind(settings)
    except OSError as exc:
        for sock in http_sockets:
            sock.close()
        return _cannot_bind(exc)
    plane = DataPlane(settings, worker=worker)
    if settings.gc_tuning:
        heap.tune()
        plane.registry.after_change = heap.settle
    http = _Uvicorn(_uvicorn_config(create_app(plane), settings))
    management = _ManagementServer(plane, settings, management_sockets) if management_sockets else None
    grpc_server = None
    if settings.enable_grpc:
        servicer = InferenceServicer(plane)
        grpc_server = create_grpc_server(servicer, settings, ready=plane.ready, share_port=share)
        try:
            await grpc_server.start()
        except OSError as exc:
            for sock in http_sockets + management_sockets:
                sock.close()
            return _cannot_bind(exc)
    stop = _stop_event(worker)
    http_task = asyncio.create_task(http.serve(sockets=http_sockets))
    # a worker has started once HTTP is up (its supervisor stops the server for one that fails before)
    if worker is None:
        await plane.start()  # models load in the background: liveness answers now, readiness when loaded
        log.info("serving %s: %s", settings.model_store, served_at(settings))
    elif await _http_started(http, http_task):
        await plane.start()
        log.info("worker %d of %d (pid %d) serving", worker.index, worker.workers, os.getpid())
    management_task = management.start() if management else None
    stopper = asyncio.create_task(stop.wait())
    servers = {http_task} | ({management_task} if management_task else set())
    await asyncio.wait({*servers, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if any(task.done() for task in servers):  # uvicorn could not start
        stopper.cancel()
        if grpc_server is not None:
            await grpc_server.stop(0)
        if management is not None:
            await management.stop()
        await plane.stop()
        failure = next((t.exception() for t in servers if t.done() and t.exception()), None)
        log.error("the HTTP server stopped at start-up%s", f": {failure!r}" if failure else "; see above")
        return 1
    code = await _drain(plane, http, http_task, grpc_server)
    if management is not None:  # answered 503 since the drain began; its requests finished with it
        await management.stop()
    return code


async def _http_started(http: _Uvicorn, task: asyncio.Task[None]) -> bool:
    """Wait for uvicorn's start-up (TLS files loaded, listening): True, or False when it failed."""
    while not http.started and not task.done():
        await asyncio.sleep(0.01)
    return http.started


def _stop_event(worker: WorkerSpec | None) -> asyncio.Event:
    """Set by SIGTERM / SIGINT; in a worker also when its supervisor is gone (its end of the
    worker's stdin closed), so a supervisor killed outright leaves no worker holding the ports."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if worker is not None:
        stdin = sys.stdin.fileno()

        def supervisor_gone() -> None:
            if not os.read(stdin, 1):  # EOF; the supervisor writes nothing after the worker's spec
                loop.remove_reader(stdin)
                log.warning("worker %d: its supervisor is gone; draining", worker.index)
                stop.set()

        loop.add_reader(stdin, supervisor_gone)
    return stop


class _ManagementServer:
    """TorchServe's management API (``service.management_api``) on ``management_port``, a second
    uvicorn on the same loop: served only with ``enable_management``, bound before anything
    starts (like HTTP), and stopped after the drain."""

    def __init__(self, plane: DataPlane, settings: Settings, sockets: list[socket.socket]) -> None:
        from deepserve.service.management_api import create_management_app

        config = _uvicorn_config(create_management_app(plane), settings)
        config.port = settings.management_port
        self.server = _Uvicorn(config)
        self.sockets = sockets
        self.task: asyncio.Task[None] | None = None
        self.where = f"{settings.host}:{settings.management_port}"

    @staticmethod
    def bind(settings: Settings) -> list[socket.socket]:
        """The management sockets, or none when it is not served."""
        if not settings.enable_management or settings.management_port == 0:
            return []
        try:
            return bind_listeners(settings.host, settings.management_port, BACKLOG)
        except OSError as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            where = f"{settings.host}:{settings.management_port}"
            raise OSError(f"cannot bind the TorchServe management API on {where}: {cause.strerror or cause} "
                          "(DEEPSERVE_MANAGEMENT_PORT=0 turns it off)") from exc  # fmt: skip

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self.server.serve(sockets=self.sockets))
        log.info("TorchServe management API on %s (management token required)", self.where)
        return self.task

    async def stop(self) -> None:
        if self.task is None:
            for sock in self.sockets:
                sock.close()
            return
        self.server.config.timeout_graceful_shutdown = 1
        self.server.should_exit = True
        with contextlib.suppress(Exception):  # it failed at start-up: said by the caller
            await self.task


def _uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=settings.host, port=settings.http_port, http="httptools", lifespan="off",
        access_log=False, log_level=settings.log_level, backlog=BACKLOG, timeout_keep_alive=30,
        log_config=None,  # uvicorn's lines go through our handler and format (service.logs)
        timeout_graceful_shutdown=int(settings.drain_timeout_s) + 1,
        ssl_certfile=settings.tls_certfile, ssl_keyfile=settings.tls_keyfile,
        ssl_ca_certs=str(settings.tls_ca_certfile) if settings.tls_ca_certfile else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if settings.tls_ca_certfile else ssl.CERT_NONE,
    )  # fmt: skip


def _cannot_bind(exc: OSError) -> int:
    log.error("%s", taken(exc))
    return 1


async def _drain(plane: DataPlane, http: _Uvicorn, http_task: Any, grpc_server: GrpcServer | None) -> int:
    """SIGTERM: every step shares the one drain deadline the data plane starts now."""
    timeout = plane.settings.drain_timeout_s
    log.info("signal received: draining (up to %.0f s)", timeout)
    plane.begin_drain()
    if grpc_server is not None:  # health NOT_SERVING now: probes stop sending while calls finish
        await grpc_server.begin_drain()
    if not await plane.wait_idle():
        left = plane.state.inflight
        log.warning("%d requests still in flight after %.0f s; stopping anyway", left, timeout)
    if grpc_server is not None:
        await grpc_server.stop(min(1.0, plane.state.drain_time_left()))
    # uvicorn waits for its connections' tasks, then the models drain, within what is left of the
    # same deadline: work still running now has had its time
    http.config.timeout_graceful_shutdown = max(1, math.ceil(plane.state.drain_time_left()))
    http.should_exit = True
    await http_task
    await plane.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
