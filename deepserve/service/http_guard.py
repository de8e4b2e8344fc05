"""Pure ASGI middleware in front of every route: the data plane's guard, and the body-size limit.

The guard (``DataPlane.admit`` / ``release``: drain refusal, bearer token, in-flight count) is the
policy every transport applies; the body limit is HTTP's own (gRPC caps its messages itself). Kept out of
FastAPI's middleware stack (BaseHTTPMiddleware costs a task per request) so the hot path pays a
few dict lookups. Health, readiness and /metrics stay open and are never refused while draining,
so probes and scrapes keep telling the truth.

With traces or the access log on, the guard also hands the request's method, path, trace headers
and ``x-request-id`` to the model call it makes (``call.arriving``); with both off it reads none of it.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deepserve.service import tracing
from deepserve.service.call import Incoming, arrived, arriving
from deepserve.service.dataplane import DataPlane
from deepserve.service.errors import PayloadTooLargeError
from deepserve.service.http_errors import error_response

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/ping", "/metrics", "/v2"})


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or (path.startswith("/v2/models/") and path.endswith("/ready"))


class GuardMiddleware:
    def __init__(self, app: ASGIApp, plane: DataPlane) -> None:
        self.app = app
        self.plane = plane
        self.max_body = plane.settings.max_body_bytes
        self.access_log = plane.settings.access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        auth = length = None
        headers: Any = scope["headers"]
        for key, value in headers:
            if key == b"authorization":
                auth = value
            elif key == b"content-length":
                length = value
        try:
            self.plane.admit(auth, trusted=_is_management(path))
        except Exception as exc:
            await error_response(exc, path)(scope, receive, send)
            return
        try:
            if length is not None and length.isdigit() and int(length) > self.max_body:
                error = PayloadTooLargeError(f"request body of {int(length)} bytes exceeds the "
                                             f"{self.max_body}-byte limit (max_body_bytes)")  # fmt: skip
                await error_response(error, path)(scope, receive, send)
                return
            if not (tracing.active or self.access_log):
                await self.app(scope, self._limited(receive), send)
                return
            token = arriving(_incoming(scope))
            try:
                await self.app(scope, self._limited(receive), send)
            finally:
                arrived(token)
        finally:
            self.plane.release()

    def _limited(self, receive: Receive) -> Receive:
        """Counts a chunked body as it arrives, so a body without Content-Length is capped too."""
        seen = 0
        limit = self.max_body

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # an HTTPException, because FastAPI turns anything else raised while it reads a
                    # body into "400 error parsing the body"; the error handlers type it as a 413
                    raise HTTPException(413, f"request body exceeds the {limit}-byte limit (max_body_bytes)")
            return message

        return wrapped


def _incoming(scope: Scope) -> Incoming:
    wanted = tracing.header_names()
    carrier: dict[str, str] = {}
    request_id = None
    for key, value in scope["headers"]:
        name = key.decode("latin-1")
        if name in wanted:
            carrier[name] = value.decode("latin-1")
        elif name == "x-request-id":
            request_id = value.decode("latin-1")
    return Incoming(scope["method"], scope["path"], request_id, carrier or None)


def _is_management(path: str) -> bool:
    """Load/unload carry the management token, which the data plane checks when it loads."""
    return path.startswith("/v2/repository/models/")
