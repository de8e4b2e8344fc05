"""Typed errors -> HTTP responses, once, in each protocol's own error body.

- KServe v2 (``/v2``): ``{"error": "<message>"}``
- TorchServe-style (``/predictions``, ``/ping``): ``{"code", "type", "message"}``
- OpenAI-style (``/v1``): ``{"error": {"message", "type", "param", "code"}}``
429 and 503 answers carry ``Retry-After`` so well-behaved clients back off.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from deepserve.handlers.base import HandlerError
from deepserve.service import json_codec
from deepserve.service.errors import (
    DeepserveError,
    InvalidRequestError,
    QueueFullError,
    as_deepserve_error,
    error_for_status,
)

log = logging.getLogger(__name__)

_OPENAI_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_exceeded",
    503: "service_unavailable", 504: "timeout",
}  # fmt: skip


def protocol_of(path: str) -> str:
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith("/predictions") or path == "/ping":
        return "torchserve"
    return "v2-http"


def error_body(error: DeepserveError, protocol: str) -> dict[str, Any]:
    if protocol == "openai":
        kind = _OPENAI_TYPES.get(error.status, "server_error")
        return {"error": {"message": error.message, "type": kind, "param": None, "code": error.status}}
    if protocol == "torchserve":
        return {"code": error.status, "type": type(error).__name__, "message": error.message}
    return {"error": error.message}


def _typed(exc: BaseException) -> DeepserveError:
    if isinstance(exc, HTTPException):  # Starlette's own (404, 405) and the body limiter's 413
        return error_for_status(exc.status_code, str(exc.detail))
    return as_deepserve_error(exc)


def error_response(exc: BaseException, path: str) -> Response:
    error = _typed(exc)
    if error.status >= 500 and not isinstance(exc, (DeepserveError, HandlerError)):
        log.error("unhandled error on %s", path, exc_info=exc)
    headers = {}
    if error.status in (429, 503):
        retry = error.retry_after if isinstance(error, QueueFullError) else 1.0
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
    body = json_codec.dumps(error_body(error, protocol_of(path)))
    return Response(body, status_code=error.status, media_type="application/json", headers=headers)


def _problem(error: dict[str, Any]) -> str:
    """One of FastAPI's validation errors in words a client can act on."""
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid":  # loc: ("body", character offset)
        reason = (error.get("ctx") or {}).get("error", "")
        at = f" at character {loc[1]}" if len(loc) > 1 else ""
        return f"the body is not valid JSON{at}" + (f" ({reason})" if reason else "")
    if loc == ("body",) and error.get("type") in ("model_attributes_type", "dict_type"):
        return "the body must be a JSON object, sent with content-type: application/json"
    field = ".".join(str(p) for p in loc if p != "body")
    return f"{field}: {error.get('msg')}" if field else str(error.get("msg"))


def install_error_handlers(app: FastAPI) -> None:
    async def typed(request: Request, exc: Exception) -> Response:
        return error_response(exc, request.url.path)

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(_problem(e) for e in exc.errors())
        return error_response(InvalidRequestError(f"invalid request body: {problems}"), request.url.path)

    async def http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        response = error_response(exc, request.url.path)
        response.headers.update(exc.headers or {})
        return response

    app.add_exception_handler(DeepserveError, typed)
    app.add_exception_handler(HandlerError, typed)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http)
    app.add_exception_handler(Exception, typed)
