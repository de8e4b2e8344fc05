"""Pure ASGI middleware in front of every route: drain refusal, bearer auth, body-size limit.

Kept out of FastAPI's middleware stack (BaseHTTPMiddleware costs a task per request) so the
hot path pays a few dict lookups. Health, readiness and /metrics stay open and are never
refused while draining, so probes and scrapes keep telling the truth.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deepserve.service.errors import PayloadTooLargeError, ShuttingDownError, UnauthorizedError
from deepserve.service.http_errors import error_response
from deepserve.service.settings import Settings
from deepserve.service.state import ServerState

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/ping", "/metrics", "/v2"})


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or (path.startswith("/v2/models/") and path.endswith("/ready"))


class GuardMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, state: ServerState) -> None:
        self.app = app
        self.state = state
        self.max_body = settings.max_body_bytes
        token = settings.auth_token
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if is_open(path):
            await self.app(scope, receive, send)
            return
        error = self._refusal(scope)
        if error is not None:
            await error_response(error, path)(scope, receive, send)
            return
        self.state.enter()
        try:
            await self.app(scope, self._limited(receive), send)
        finally:
            self.state.leave()

    def _refusal(self, scope: Scope) -> Exception | None:
        if self.state.draining:
            return ShuttingDownError("server is shutting down; retry on another replica")
        headers: Any = scope["headers"]
        auth = length = None
        for key, value in headers:
            if key == b"authorization":
                auth = value
            elif key == b"content-length":
                length = value
        protected = self.expected is not None and not _is_management(scope["path"])
        if protected and (auth is None or not hmac.compare_digest(auth, self.expected or b"")):
            return UnauthorizedError("missing or wrong bearer token: send 'Authorization: Bearer <token>'")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return PayloadTooLargeError(
                f"request body of {int(length)} bytes exceeds the {self.max_body}-byte limit (max_body_bytes)"
            )
        return None

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


def _is_management(path: str) -> bool:
    """Load/unload check their own (management) token in the route."""
    return path.startswith("/v2/repository/models/")
