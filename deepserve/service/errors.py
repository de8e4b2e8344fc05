"""Typed errors of the service: each carries its HTTP status and gRPC code, mapped once per transport.

Handlers raise ``handlers.base.HandlerError`` subclasses (they never import ``service``);
``as_deepserve_error`` turns those into the same shape so transports see one kind of error.
"""

from __future__ import annotations

import asyncio

import grpc
from starlette.requests import ClientDisconnect

from deepserve.handlers.base import HandlerError


class DeepserveError(Exception):
    """Base of every error a client can be answered with; the message says what to do."""

    status = 500
    grpc_code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequestError(DeepserveError):
    status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class UnauthorizedError(DeepserveError):
    status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class ModelNotFoundError(DeepserveError):
    status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class PayloadTooLargeError(DeepserveError):
    status = 413
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class QueueFullError(DeepserveError):
    """The model's queue is full; the client should retry after ``retry_after`` seconds."""

    status = 429
    grpc_code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelNotReadyError(DeepserveError):
    status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class ShuttingDownError(DeepserveError):
    status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(DeepserveError):
    status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class ManagementDisabledError(DeepserveError):
    status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class ClientClosedError(DeepserveError):
    """The client left first: disconnected, cancelled the call, or let its deadline pass.

    499 (nginx's "client closed request") keeps these out of the 5xx that page someone.
    """

    status = 499
    grpc_code = grpc.StatusCode.CANCELLED


class InternalError(DeepserveError):
    """A bug or a runtime failure the client cannot fix; the log has the traceback."""


_HANDLER_CLASSES: dict[int, type[DeepserveError]] = {
    400: InvalidRequestError,
    404: ModelNotFoundError,
    413: PayloadTooLargeError,
    503: ModelNotReadyError,
    504: DeadlineExceededError,
}


def as_deepserve_error(exc: BaseException) -> DeepserveError:
    """The one mapping from any exception to a typed service error."""
    if isinstance(exc, DeepserveError):
        return exc
    # the transport gave up on it; GeneratorExit: a stream's consumer stopped reading it
    if isinstance(exc, (asyncio.CancelledError, ClientDisconnect, GeneratorExit)):
        return ClientClosedError("the client went away before the answer")
    if isinstance(exc, HandlerError):
        return error_for_status(exc.status, str(exc) or type(exc).__name__)
    return InternalError(f"internal error ({type(exc).__name__}: {exc}); see the server log")


def error_for_status(status: int, message: str) -> DeepserveError:
    """A typed error for a status another layer chose (a handler, Starlette's routing)."""
    error = _HANDLER_CLASSES.get(status, InternalError if status >= 500 else InvalidRequestError)(message)
    error.status = status
    return error
