"""The gRPC server: grpc.aio with what users of a gRPC server expect of one.

- ``inference.GRPCInferenceService``: the servicer it is given (``grpc_service``).
- ``grpc.health.v1.Health`` (grpcio-health-checking): SERVING while ``ready()`` holds, for the
  server ("") and for the inference service; NOT_SERVING while it does not, and for good from
  ``begin_drain``, so a load balancer's probe stops sending before the listener closes.
- Server reflection (grpcio-reflection): ``grpcurl list`` and similar tools work without the proto.
- TLS from ``tls_certfile`` / ``tls_keyfile`` (client certificates with ``tls_ca_certfile``).
- Keepalive and max connection age from settings; messages over ``max_body_bytes`` are refused
  with RESOURCE_EXHAUSTED before they are decoded, as HTTP answers 413.
- The port is its own (a taken port fails), or shared with ``SO_REUSEPORT`` by the processes of
  ``deepserve serve --workers N`` (``share_port``), on a port their supervisor checked and holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from deepserve.service.settings import Settings

log = logging.getLogger(__name__)

INFERENCE_SERVICE: str = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
MAX_MESSAGE = 2**31 - 1  # grpc's own ceiling: what "no limit" means for a length
HEALTH_POLL_S = 0.5  # how stale the health status may be; readiness has no change callback to hook
# clients may ping this often with no call open: tritonclient's KeepAliveOptions and grpc's default
# server policy (5 min) disagree, and a client pinging faster than the policy allows gets GOAWAY
MIN_CLIENT_PING_S = 10.0

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_LISTED = (INFERENCE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME)  # what reflection names


class GrpcServer(Protocol):
    """What ``serve`` needs of the gRPC server."""

    async def start(self) -> None: ...

    async def begin_drain(self) -> None:
        """Health answers NOT_SERVING from now on; calls are still served until ``stop``."""

    async def stop(self, grace: float | None) -> None: ...


def create_grpc_server(
    servicer: Any, settings: Settings, *, ready: Callable[[], bool], share_port: bool = False
) -> GrpcServer:
    """``servicer`` implements ``inference.GRPCInferenceService``; ``ready()`` is the server's
    readiness (models loaded, not draining), which the health service reports; ``share_port``:
    bind with ``SO_REUSEPORT``, as every worker of ``--workers`` does."""
    return _AioServer(servicer, settings, ready, share_port)


def server_options(settings: Settings, *, share_port: bool = False) -> list[tuple[str, int]]:
    """grpc channel arguments from settings (grpc's names, in milliseconds)."""

    def ms(seconds: float) -> int:
        return min(int(seconds * 1000), MAX_MESSAGE)

    options = [
        ("grpc.max_receive_message_length", min(settings.max_body_bytes, MAX_MESSAGE)),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        # a taken port must fail, not split the traffic with another server; workers share theirs
        ("grpc.so_reuseport", int(share_port)),
        ("grpc.keepalive_time_ms", ms(settings.grpc_keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", ms(settings.grpc_keepalive_timeout_s)),
        # accept clients' keepalive pings on idle connections (and send ours there too)
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(MIN_CLIENT_PING_S)),
    ]
    if settings.grpc_max_connection_age_s is not None:
        options += [
            ("grpc.max_connection_age_ms", ms(settings.grpc_max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", ms(settings.grpc_max_connection_age_grace_s)),
        ]
    return options


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials when the settings name a certificate, else None (plaintext)."""
    if settings.tls_certfile is None or settings.tls_keyfile is None:
        return None
    pair = (settings.tls_keyfile.read_bytes(), settings.tls_certfile.read_bytes())
    ca = settings.tls_ca_certfile.read_bytes() if settings.tls_ca_certfile is not None else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


class _AioServer:
    """grpc.aio, built and bound at ``start``, on the running loop (grpc.aio binds to it)."""

    def __init__(
        self, servicer: Any, settings: Settings, ready: Callable[[], bool], share_port: bool
    ) -> None:
        self._servicer, self._settings, self._ready = servicer, settings, ready
        self._share_port = share_port
        self._address = f"{settings.host}:{settings.grpc_port}"
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._serving: bool | None = None  # what health says now; None before start
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        server = grpc.aio.server(options=server_options(self._settings, share_port=self._share_port))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(_LISTED, server)
        credentials = server_credentials(self._settings)
        try:  # grpcio raises RuntimeError where older releases returned port 0
            if credentials is None:
                port = server.add_insecure_port(self._address)
            else:
                port = server.add_secure_port(self._address, credentials)
        except RuntimeError:
            port = 0
        if port == 0:  # serve turns an OSError into "is another deepserve running?"
            raise OSError(f"cannot bind gRPC on {self._address}")
        await self._follow_readiness()  # right from the first call: NOT_SERVING while models load
        await server.start()
        self._server = server
        self._poller = asyncio.create_task(self._poll())

    async def begin_drain(self) -> None:
        await self._stop_polling()
        # the library's own switch: every service NOT_SERVING, later sets ignored
        await self._health.enter_graceful_shutdown()

    async def stop(self, grace: float | None) -> None:
        await self.begin_drain()  # health Watch streams see NOT_SERVING before they are cut
        if self._server is not None:
            await self._server.stop(grace)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_POLL_S)
            try:
                await self._follow_readiness()
            except Exception:  # a failing readiness check must not end health reporting
                log.exception("readiness check failed; health status left as it was")

    async def _follow_readiness(self) -> None:
        serving = bool(self._ready())
        if serving == self._serving:
            return
        self._serving = serving
        for service in ("", INFERENCE_SERVICE):
            await self._health.set(service, _SERVING if serving else _NOT_SERVING)

    async def _stop_polling(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
