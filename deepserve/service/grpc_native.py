"""The KServe v2 gRPC service on the event loop itself: one asyncio protocol per connection.

Each connection's bytes go through ``service._grpc_h2.Session`` (nghttp2 and the gRPC framing,
``service/native/h2_session.cc``) inside the loop's own ``data_received`` callback, the way
uvicorn runs httptools for HTTP/1.1. No thread sits between the socket and the servicer, so a call
costs no cross-thread wake-up; calls that arrive together reach the batcher together; answers that
complete in one loop turn leave in one write.

The servicer gets a context with what it uses of grpc.aio's: ``invocation_metadata``, ``abort`` and
``time_remaining``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from deepserve.service.grpc_service import InferenceServicer

log = logging.getLogger(__name__)
_OK, _INVALID, _INTERNAL, _CANCELLED, _DEADLINE = (c.value[0] for c in (
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL,
    grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
))  # fmt: skip

_SERVICE = "inference.GRPCInferenceService"
_Key = tuple["_Connection", int]  # a call: its connection and HTTP/2 stream


def native_front_available() -> bool:
    try:
        from deepserve.service import _grpc_h2  # noqa: F401
    except ImportError:
        return False
    return True


class AbortError(Exception):
    """Raised by ``_Context.abort``: the call ends with this status, as with grpc.aio's abort."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _Context:
    __slots__ = ("_call", "_deadline", "_front")

    def __init__(self, front: Any, call: int, remaining_s: float) -> None:
        self._front, self._call = front, call
        self._deadline = time.monotonic() + remaining_s if remaining_s >= 0 else None

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._front.metadata(self._call)  # type: ignore[no-any-return]

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise AbortError(code, details)


@dataclass(frozen=True)
class _Route:
    path: str
    handler: Callable[..., Any]
    request: Any  # the request message class
    streaming: bool


def _routes(servicer: InferenceServicer) -> list[_Route]:
    """Every unary and bidirectional method of the service that the servicer implements."""
    routes = []
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        implemented = getattr(type(servicer), method.name, None)
        if implemented is None or implemented is getattr(pb_grpc.GRPCInferenceServiceServicer, method.name):
            continue  # the generated base (shared memory, trace, logging): the front says UNIMPLEMENTED
        if method.client_streaming != method.server_streaming:
            continue  # a one-sided stream (the service has none)
        handler = getattr(servicer, method.name)
        path = f"/{_SERVICE}/{method.name}"
        routes.append(_Route(path, handler, getattr(pb, method.input_type.name), method.client_streaming))
    return routes


class _Connection(asyncio.Protocol):
    """One client connection: bytes in through the session, answers out in one write per turn."""

    def __init__(self, server: NativeGrpcServer) -> None:
        from deepserve.service import _grpc_h2

        self.server = server
        self.session = _grpc_h2.Session(server.paths, server.streaming, server.max_receive)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._flush_due = False
        self.queued = 0  # bytes in this connection's streaming inboxes, not yet read by handlers
        self._reading_paused = False

    # -- asyncio protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        self.server.connections.add(self)
        self.flush()  # the server's SETTINGS

    def data_received(self, data: bytes) -> None:
        try:
            events = self.session.feed(data)
        except RuntimeError as exc:  # the peer broke HTTP/2: nghttp2 queued a GOAWAY saying why
            log.info("closing a gRPC connection: %s", exc)
            self.flush()
            self.close()
            return
        for event in events:
            self.server.on_event(self, *event)
        self.flush()  # SETTINGS and PING acks, window updates, calls refused in the session

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.forget(self)

    # -- what a call's task answers through (the same names as the threaded front's) ----------------
    def reply(self, stream: int, payload: bytes) -> None:
        if not self.closed:
            self.session.reply(stream, payload)
            self.flush_soon()

    def write(self, stream: int, payload: bytes) -> None:
        if not self.closed:
            self.session.write(stream, payload)
            self.flush_soon()

    def finish(self, stream: int, code: int, message: str = "") -> None:
        if not self.closed:
            self.session.finish(stream, code, message)
            self.flush_soon()

    def metadata(self, stream: int) -> tuple[tuple[str, Any], ...]:
        # binary metadata (-bin keys) travels base64-encoded, unpadded
        return tuple(
            (key, base64.b64decode(value + "=" * (-len(value) % 4)) if key.endswith("-bin") else value)
            for key, value in self.session.metadata(stream)
        )

    def flush_soon(self) -> None:
        """Answers finished in one loop turn (a batch's worth) leave in one write."""
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_due = False
        if self.closed or self.transport is None:
            return
        out = self.session.output()
        if out:
            self.transport.write(out)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()  # after what is buffered is written

    # -- back-pressure from streaming calls -------------------------------------------------------
    def queued_changed(self, delta: int) -> None:
        """Bytes in this connection's inboxes, all calls together, are bounded by the receive limit:
        past it the socket is not read until the handlers are down to half. Each call is already
        paced by its own stream window (``_Inbox``); only many calls at once get here."""
        self.queued += delta
        if self.closed or self.transport is None:
            return
        if not self._reading_paused and self.queued > self.server.max_receive:
            self._reading_paused = True
            self.transport.pause_reading()
        elif self._reading_paused and self.queued <= self.server.max_receive // 2:
            self._reading_paused = False
            self.transport.resume_reading()


class _Inbox:
    """A streaming call's requests that its handler has not read yet.

    The handler reads them one at a time (each request's answer is streamed before the next is
    read). Past ``HIGH`` unread requests the session stops acknowledging the call's DATA, so the
    client can send at most what is left of that stream's window (HTTP/2 flow control, this call
    alone); from ``LOW`` it acknowledges again. Other calls on the connection go on meanwhile.
    """

    HIGH, LOW = 64, 16

    def __init__(self, conn: _Connection, stream: int) -> None:
        self._conn, self._stream = conn, stream
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.held = False

    def put(self, payload: bytes | None) -> None:  # None: the client's half-close
        self._queue.put_nowait(payload)
        if payload:
            self._conn.queued_changed(len(payload))
        if not self.held and self._queue.qsize() >= self.HIGH:
            self.held = True
            self._conn.session.hold(self._stream)

    async def get(self) -> bytes | None:
        payload = await self._queue.get()
        if payload:
            self._conn.queued_changed(-len(payload))
        if self.held and self._queue.qsize() <= self.LOW:
            self._release()
        return payload

    def close(self) -> None:
        """The call is over: what it left unread no longer counts against the connection."""
        while not self._queue.empty():
            payload = self._queue.get_nowait()
            if payload:
                self._conn.queued_changed(-len(payload))
        if self.held:
            self._release()

    def _release(self) -> None:
        self.held = False
        self._conn.session.release(self._stream)
        self._conn.flush_soon()  # the WINDOW_UPDATE


class NativeGrpcServer:
    """Same ``start`` / ``stop(grace)`` as ``grpc.aio.Server``, so ``serve`` runs either."""

    front = "native"

    def __init__(self, servicer: InferenceServicer, host: str, port: int, max_receive: int) -> None:
        self._routes = _routes(servicer)
        self.paths = [r.path for r in self._routes]
        self.streaming = [r.streaming for r in self._routes]
        self.max_receive = max_receive
        self._host, self._port = host.strip("[]"), port
        self._server: asyncio.AbstractServer | None = None
        self.connections: set[_Connection] = set()
        self._tasks: dict[_Key, asyncio.Task[None]] = {}
        self._streams: dict[_Key, _Inbox] = {}

    def active_calls(self) -> int:
        return sum(c.session.active_calls() for c in self.connections)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _Connection(self), self._host, self._port)
        except OSError as exc:
            raise OSError(f"cannot bind gRPC on {self._host}:{self._port}: {exc}") from exc

    async def stop(self, grace: float | None) -> None:
        """Stop accepting; calls still running after ``grace`` seconds are cancelled."""
        if self._server is None:
            return
        self._server.close()
        for conn in list(self.connections):  # clients stop opening streams here
            conn.session.shutdown_notice()
            conn.flush()
        running = list(self._tasks.values())
        if running and grace:
            await asyncio.wait(running, timeout=grace)
        for conn in list(self.connections):
            conn.session.goaway()
        late = list(self._tasks.values())
        for task in late:
            task.cancel()  # each answers CANCELLED on its way out
        if late:
            await asyncio.wait(late, timeout=1.0)
        for conn in list(self.connections):
            conn.flush()
            conn.close()
        self._server = None

    # -- events from the connections -------------------------------------------------------------
    def on_event(
        self, conn: _Connection, stream: int, kind: int, method: int, payload: Any, remaining: float
    ) -> None:
        from deepserve.service._grpc_h2 import CANCELLED, HALF_CLOSE, MESSAGE, START

        key = (conn, stream)
        if kind == START:
            self._start(key, self._routes[method], payload, remaining)
        elif kind in (MESSAGE, HALF_CLOSE):
            inbox = self._streams.get(key)
            if inbox is not None:
                inbox.put(payload)  # None at the half-close ends the request stream
        elif kind == CANCELLED:
            self._drop(key)

    def forget(self, conn: _Connection) -> None:
        """The connection is gone: its calls are cancelled, with nobody left to answer."""
        self.connections.discard(conn)
        for key in [k for k in self._tasks if k[0] is conn]:
            self._drop(key)

    def _drop(self, key: _Key) -> None:
        task = self._tasks.pop(key, None)
        self._close_inbox(key)  # a task cancelled before its first step has no finally
        if task is not None:
            task.cancel()

    def _close_inbox(self, key: _Key) -> None:
        inbox = self._streams.pop(key, None)
        if inbox is not None:
            inbox.close()

    def _start(self, key: _Key, route: _Route, payload: bytes, remaining: float) -> None:
        conn, stream = key
        context = _Context(conn, stream, remaining)
        if route.streaming:
            inbox = _Inbox(conn, stream)
            inbox.put(payload)
            self._streams[key] = inbox
            coro = self._stream(key, route, inbox, context)
        else:
            coro = self._unary(key, route, payload, context)
        self._tasks[key] = asyncio.get_running_loop().create_task(coro)

    async def _unary(self, key: _Key, route: _Route, payload: bytes, context: _Context) -> None:
        conn, stream = key
        with self._answering(key, route, context):
            request = route.request.FromString(payload)
            response = await route.handler(request, context)
            conn.reply(stream, response.SerializeToString())

    async def _stream(
        self, key: _Key, route: _Route, inbox: _Inbox, context: _Context
    ) -> None:
        conn, stream = key

        async def requests() -> AsyncIterator[Any]:
            while (payload := await inbox.get()) is not None:
                yield route.request.FromString(payload)

        with self._answering(key, route, context):
            async for response in route.handler(requests(), context):
                conn.write(stream, response.SerializeToString())
            conn.finish(stream, _OK, "")

    @contextlib.contextmanager
    def _answering(self, key: _Key, route: _Route, context: _Context) -> Iterator[None]:
        """Every way a call's task can end becomes the call's final status, exactly once."""
        conn, stream = key
        remaining = context.time_remaining()
        expiry = None
        if remaining is not None:  # the client's deadline ends the call here too, streams included
            expiry = asyncio.get_running_loop().call_later(remaining, self._expire, key)
        try:
            yield
        except AbortError as exc:
            conn.finish(stream, exc.code.value[0], exc.details)
        except DecodeError as exc:
            conn.finish(stream, _INVALID, f"cannot parse a {route.request.__name__}: {exc}")
        except asyncio.CancelledError:
            # cancelled by the client, which removed the task from _tasks first (nothing to answer),
            # by its deadline (answered in _expire), or by the server (stop): still owed an answer
            if key in self._tasks:
                conn.finish(stream, _CANCELLED, "the server cancelled the call")
            raise
        except Exception:
            log.exception("unexpected error in %s", route.path)
            conn.finish(stream, _INTERNAL, "internal error; see the server log")
        finally:
            if expiry is not None:
                expiry.cancel()
            self._tasks.pop(key, None)
            self._close_inbox(key)

    def _expire(self, key: _Key) -> None:
        task = self._tasks.pop(key, None)
        self._close_inbox(key)
        if task is not None:
            key[0].finish(key[1], _DEADLINE, "deadline exceeded")
            task.cancel()
