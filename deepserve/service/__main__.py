"""``deepserve serve``: HTTP (uvicorn) and gRPC in one process, on one event loop.

SIGTERM / SIGINT: readiness turns false and new requests get 503 at once, in-flight work
(streams included) finishes within ``drain_timeout_s``, then the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import socket
import ssl
import sys
from collections.abc import Generator, Sequence
from typing import Any

import uvicorn

from deepserve.service.app import create_app
from deepserve.service.dataplane import DataPlane
from deepserve.service.grpc_server import GrpcServer, create_grpc_server
from deepserve.service.grpc_service import InferenceServicer
from deepserve.service.logs import configure_logging
from deepserve.service.settings import Settings

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


def settings_from(args: argparse.Namespace) -> Settings:
    """Environment first, then command-line flags that were given."""
    flags = {"model_store": args.store, "host": args.host, "http_port": args.http_port,
             "grpc_port": args.grpc_port, "log_level": args.log_level}  # fmt: skip
    given = {k: v for k, v in flags.items() if v is not None}
    if given.get("grpc_port") == 0:
        given["enable_grpc"] = False
    return Settings(**given)


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
    import uvloop  # comes with uvicorn[standard]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(settings))


def _bind_http(host: str, port: int, backlog: int) -> list[socket.socket]:
    """The HTTP sockets, listening before anything starts: a taken port is one clear error, and a
    second server cannot take the port while the first loads its models. One socket per address
    the host resolves to, as asyncio's create_server binds them ("localhost": 127.0.0.1 and ::1)."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # its own socket for IPv6, as asyncio does
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise OSError(f"cannot bind HTTP on {host}:{port}: {exc.strerror or exc}") from exc
    return sockets


async def serve(settings: Settings) -> int:
    try:
        http_sockets = _bind_http(settings.host, settings.http_port, BACKLOG)
    except OSError as exc:
        return _cannot_bind(exc)
    try:
        management_sockets = _ManagementServer.bind(settings)
    except OSError as exc:
        for sock in http_sockets:
            sock.close()
        return _cannot_bind(exc)
    plane = DataPlane(settings)
    http = _Uvicorn(_uvicorn_config(create_app(plane), settings))
    management = _ManagementServer(plane, settings, management_sockets) if management_sockets else None
    grpc_server = None
    if settings.enable_grpc:
        grpc_server = create_grpc_server(InferenceServicer(plane), settings, ready=plane.ready)
        try:
            await grpc_server.start()
        except OSError as exc:
            for sock in http_sockets + management_sockets:
                sock.close()
            return _cannot_bind(exc)
    await plane.start()  # models load in the background: liveness answers now, readiness when loaded
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    http_task = asyncio.create_task(http.serve(sockets=http_sockets))
    grpc_at = f"{settings.host}:{settings.grpc_port}" if grpc_server else "off"
    log.info("serving %s: HTTP %s:%d, gRPC %s%s", settings.model_store, settings.host, settings.http_port,
             grpc_at, " (TLS)" if settings.tls else "")  # fmt: skip
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
            return _bind_http(settings.host, settings.management_port, BACKLOG)
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
        timeout_graceful_shutdown=int(settings.drain_timeout_s) + 1,
        ssl_certfile=settings.tls_certfile, ssl_keyfile=settings.tls_keyfile,
        ssl_ca_certs=str(settings.tls_ca_certfile) if settings.tls_ca_certfile else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if settings.tls_ca_certfile else ssl.CERT_NONE,
    )  # fmt: skip


def _cannot_bind(exc: OSError) -> int:
    log.error(
        "%s. Is another deepserve (or `deepserve up`) running? Stop it, or choose other ports with "
        "--http-port / --grpc-port (0 turns gRPC off).", exc
    )
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
