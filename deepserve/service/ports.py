"""The server's listening sockets, bound before anything starts, and the port check of ``--workers``.

One process (``workers = 1``) binds its ports plainly: a port another program holds fails at once,
and nobody can share it. Worker processes (``deepserve serve --workers N``) share each port with
``SO_REUSEPORT``; the kernel spreads new connections over their listening sockets. Two rules of
that option make a check necessary: it shares a port among any sockets that all set it and belong
to the same user, and it says nothing when one does. So the supervisor ``reserve``s each port
before it starts a worker: a plain bind first, which fails when any socket at all holds the port
(a one-process server, another ``--workers`` server, anything), then a socket of its own with
``SO_REUSEPORT`` that stays bound, unlistened, until it exits. While that socket is bound, a second
``deepserve`` on the port fails the same plain check; an unlistened socket takes no connections.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deepserve.service.settings import Settings

Address = tuple[int, int, int, tuple[object, ...]]  # family, type, proto, sockaddr from getaddrinfo


def addresses(host: str, port: int) -> list[Address]:
    """One address per family the host resolves to, as asyncio's create_server binds them
    ("localhost": 127.0.0.1 and ::1)."""
    infos = socket.getaddrinfo(
        host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    return [(family, kind, proto, address) for family, kind, proto, _, address in dict.fromkeys(infos)]


def bind_listeners(
    host: str, port: int, backlog: int, *, share: bool = False, what: str = "HTTP"
) -> list[socket.socket]:
    """Listening sockets on every address of ``host``, bound before anything starts: a taken port
    is one clear error, and a second server cannot take it while the first loads its models.
    ``share``: with ``SO_REUSEPORT`` (a worker of ``--workers``, on a port its supervisor holds).
    OSError naming ``what`` and the port."""
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, address in addresses(host, port):
            sock = _socket(family, kind, proto, reuse_address=True, reuse_port=share)
            sockets.append(sock)
            sock.bind(address)
            sock.listen(backlog)
    except OSError as exc:
        _close(sockets)
        raise OSError(f"cannot bind {what} on {host}:{port}: {exc.strerror or exc}") from exc
    return sockets


def reserve(host: str, port: int, what: str) -> tuple[list[socket.socket], int]:
    """Check that nothing holds ``host:port`` and hold it for worker processes: the bound (never
    listening) ``SO_REUSEPORT`` sockets and the port, the one the kernel picked when ``port`` is 0.
    OSError naming ``what`` and the port when any socket, shared or not, holds it already."""
    held: list[socket.socket] = []
    try:
        for family, kind, proto, address in addresses(host, port):
            if port == 0 and held:  # every address on the port the first one got
                address = (address[0], held[0].getsockname()[1], *address[2:])
            with _socket(family, kind, proto, reuse_address=True, reuse_port=False) as probe:
                probe.bind(address)  # EADDRINUSE when anything holds it, SO_REUSEPORT or not
                address = (address[0], probe.getsockname()[1], *address[2:])
            held.append(_reservation(family, kind, proto, address))
    except OSError as exc:
        _close(held)
        raise OSError(f"cannot bind {what} on {host}:{port}: {exc.strerror or exc}") from exc
    return held, held[0].getsockname()[1] if held else port


def _reservation(family: int, kind: int, proto: int, address: tuple[object, ...]) -> socket.socket:
    """Without SO_REUSEADDR a reservation also fails the plain check of a second server that
    starts while the workers boot; a port with connections still closing (TIME_WAIT, left by a
    server that did not share it) needs SO_REUSEADDR, which the probe just showed is safe."""
    for reuse_address in (False, True):
        sock = _socket(family, kind, proto, reuse_address=reuse_address, reuse_port=True)
        try:
            sock.bind(address)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or reuse_address:
                raise
    raise AssertionError("unreachable")


def _socket(family: int, kind: int, proto: int, *, reuse_address: bool, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:  # its own socket for IPv6, as asyncio does
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    except OSError:
        sock.close()
        raise
    return sock


def _close(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def served_at(settings: Settings) -> str:
    """The addresses a server answers on, for its log."""
    grpc_at = f"{settings.host}:{settings.grpc_port}" if settings.enable_grpc else "off"
    tls = " (TLS)" if settings.tls else ""
    return f"HTTP {settings.host}:{settings.http_port}, gRPC {grpc_at}{tls}"


def taken(exc: OSError) -> str:
    """What to say when a port cannot be bound, and the way out."""
    return (
        f"{exc}. Is another deepserve (or `deepserve up`) running? Stop it, or choose other ports with "
        "--http-port / --grpc-port (0 turns gRPC off)."
    )
