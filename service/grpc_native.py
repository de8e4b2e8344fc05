"""The KServe v2 gRPC service on the C++ front (``service/native/grpc_front.cc``).

The front accepts calls and does the HTTP/2 and gRPC framing in its own threads; this module
wakes once per batch of arrived calls (an eventfd on the event loop), parses each request, runs
the same ``InferenceServicer`` method grpc.aio would, and hands the serialized answer back.
Concurrent calls therefore reach the batcher together, as HTTP requests do, and a call costs the
event loop only its parse, its inference and its serialization.

The servicer gets a context with what it uses of grpc.aio's: ``invocation_metadata`` (read from
the front only when asked), ``abort`` and ``time_remaining``.
"""

from __future__ import annotations

import asyncio
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

from service.grpc_service import InferenceServicer

log = logging.getLogger(__name__)
_SERVICE = "inference.GRPCInferenceService"
_OK, _INVALID, _INTERNAL, _CANCELLED = (c.value[0] for c in (
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED
))  # fmt: skip


def native_front_available() -> bool:
    try:
        from service import _grpc_front  # noqa: F401
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


class NativeGrpcServer:
    """Same ``start`` / ``stop(grace)`` as ``grpc.aio.Server``, so ``serve`` runs either."""

    front = "native"

    def __init__(self, servicer: InferenceServicer, address: str, max_receive: int, threads: int) -> None:
        self._routes = _routes(servicer)
        self._address, self._max_receive, self._threads = address, max_receive, threads
        self._front: Any = None
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._streams: dict[int, asyncio.Queue[bytes | None]] = {}

    async def start(self) -> None:
        from service import _grpc_front

        paths, streaming = [r.path for r in self._routes], [r.streaming for r in self._routes]
        try:
            self._front = _grpc_front.Front(
                self._address, self._max_receive, 2**31 - 1, self._threads, paths, streaming
            )
        except RuntimeError as exc:
            raise OSError(str(exc)) from exc
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._front.fileno(), self._on_events)

    async def stop(self, grace: float | None) -> None:
        """Stop accepting; calls still running after ``grace`` seconds are cancelled."""
        front = self._front
        if front is None:
            return
        try:  # answers keep flowing on the loop while the front waits for its calls
            await asyncio.to_thread(front.shutdown, grace or 0.0)
        finally:
            self._loop.remove_reader(front.fileno())
            self._front = None
            for task in list(self._tasks.values()):
                task.cancel()

    # -- events from the front -------------------------------------------------------------------
    def _on_events(self) -> None:
        from service._grpc_front import CANCELLED, HALF_CLOSE, MESSAGE, START

        front = self._front
        for call, kind, method, payload, remaining in front.poll():
            if kind == START:
                self._start(front, call, self._routes[method], payload, remaining)
            elif kind in (MESSAGE, HALF_CLOSE):
                queue = self._streams.get(call)
                if queue is not None:
                    queue.put_nowait(payload)  # None at the half-close ends the request stream
            elif kind == CANCELLED:
                task = self._tasks.pop(call, None)
                self._streams.pop(call, None)  # a task cancelled before its first step has no finally
                if task is not None:
                    task.cancel()

    def _start(self, front: Any, call: int, route: _Route, payload: bytes, remaining: float) -> None:
        context = _Context(front, call, remaining)
        if route.streaming:
            queue: asyncio.Queue[bytes | None] = asyncio.Queue()
            queue.put_nowait(payload)
            self._streams[call] = queue
            coro = self._stream(front, call, route, queue, context)
        else:
            coro = self._unary(front, call, route, payload, context)
        self._tasks[call] = self._loop.create_task(coro)

    def _defer(self) -> bool:
        """Hand answers to the front's poster thread while other calls are in flight: the event
        loop is then the bottleneck and should not pay for socket writes. Alone, post at once."""
        return len(self._tasks) > 1

    async def _unary(self, front: Any, call: int, route: _Route, payload: bytes, context: _Context) -> None:
        with self._answering(front, call, route):
            request = route.request.FromString(payload)
            response = await route.handler(request, context)
            front.reply(call, response.SerializeToString(), self._defer())

    async def _stream(
        self, front: Any, call: int, route: _Route, queue: asyncio.Queue[bytes | None], context: _Context
    ) -> None:
        async def requests() -> AsyncIterator[Any]:
            while (payload := await queue.get()) is not None:
                yield route.request.FromString(payload)

        with self._answering(front, call, route):
            async for response in route.handler(requests(), context):
                front.write(call, response.SerializeToString())
            front.finish(call, _OK, "")

    @contextlib.contextmanager
    def _answering(self, front: Any, call: int, route: _Route) -> Iterator[None]:
        """Every way a call's task can end becomes the call's final status, exactly once."""
        try:
            yield
        except AbortError as exc:
            front.finish(call, exc.code.value[0], exc.details, self._defer())
        except DecodeError as exc:
            front.finish(call, _INVALID, f"cannot parse a {route.request.__name__}: {exc}")
        except asyncio.CancelledError:
            # cancelled by the client, which removed the task from _tasks first (nothing to answer),
            # or by the server (stop): the call is still owed an answer
            if call in self._tasks and self._front is not None:
                front.finish(call, _CANCELLED, "the server cancelled the call")
            raise
        except Exception:
            log.exception("unexpected error in %s", route.path)
            front.finish(call, _INTERNAL, "internal error; see the server log")
        finally:
            self._tasks.pop(call, None)
            self._streams.pop(call, None)
