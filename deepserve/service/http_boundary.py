"""The last line of the HTTP error mapping: an exception no route handled becomes a typed 500.

Left to Starlette, an unhandled exception is answered 500 by its ServerErrorMiddleware and then
re-raised, so uvicorn logs it a second time and closes the keep-alive connection: every client
of a model with a bug would reconnect for each request. Here it is answered in the protocol's own
error body (``http_errors.error_response``, which logs it once with its traceback), and the
connection stays open. An exception after the response started can only be logged: the status
line is gone, and uvicorn ends the connection for the unfinished body.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deepserve.service.http_errors import error_response
from deepserve.service.logs import is_disconnect

log = logging.getLogger(__name__)


class ErrorBoundaryMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                if is_disconnect(exc):  # the client left mid-answer: its business, not an error
                    log.info("client went away during the response to %s", scope["path"])
                else:
                    log.error("error after the response to %s started", scope["path"], exc_info=exc)
                return
            await error_response(exc, scope["path"])(scope, receive, send)
