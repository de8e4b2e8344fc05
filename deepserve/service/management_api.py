"""TorchServe's management API on a port of its own, over the one data plane.

    GET    /models[?limit=&next_page_token=]        list (TorchServe's paging)
    POST   /models?url=NAME.mar[&model_name=...]    register: import from the model store, load
    GET    /models/{name}[/{version}|/all]          describe
    PUT    /models/{name}[/{version}]?min_worker=   scale: one worker per model, or a 400 saying why
    DELETE /models/{name}[/{version}]               unregister (unload; the store keeps its files)
    PUT    /models/{name}/{version}/set-default     only to the default (the highest) version
    OPTIONS /                                       the OpenAPI description

Served by ``service.__main__`` only with ``enable_management`` (on ``management_port``), and every
request, reads included, needs ``Authorization: Bearer <management token>`` (401 without, the
inference token included) and is refused while draining (503): ``ManagementGuard`` applies the
data plane's own policy. Answers and errors have TorchServe's shapes: ``{"status": ...}`` and
``{"code", "type", "message"}`` with its exception names as ``type``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from deepserve.service import json_codec
from deepserve.service.app import no_fastapi_telemetry
from deepserve.service.dataplane import DataPlane
from deepserve.service.errors import (
    DeepserveError,
    InvalidRequestError,
    PayloadTooLargeError,
    as_deepserve_error,
)
from deepserve.service.management_describe import (
    ModelVersionNotFoundError,
    describe,
    entries_for,
    list_models,
)
from deepserve.service.management_register import Registrar, Registration, boolean, integer

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024  # a registration's JSON body: a few fields
_TYPES = {
    400: "BadRequestException", 401: "InvalidKeyException", 403: "InvalidKeyException",
    404: "ModelNotFoundException", 405: "MethodNotAllowedException", 409: "ConflictStatusException",
    413: "BadRequestException", 503: "ServiceUnavailableException",
}  # fmt: skip

router = APIRouter()


def create_management_app(plane: DataPlane) -> FastAPI:
    app = FastAPI(title="deepserve management (TorchServe)", docs_url=None, redoc_url=None, openapi_url=None,
                  **no_fastapi_telemetry())
    app.state.plane = plane
    app.state.registrar = Registrar(plane)
    app.state.started = time.time()  # when a model loaded at start-up got its worker, near enough

    async def error(request: Request, exc: Exception) -> Response:
        return error_response(exc)

    app.add_exception_handler(DeepserveError, error)
    app.add_exception_handler(HTTPException, error)
    app.add_exception_handler(Exception, error)  # a bug: logged, answered 500 in TorchServe's shape
    app.include_router(router)
    app.add_middleware(ManagementGuard, plane=plane)
    return app


def error_response(exc: BaseException) -> Response:
    if isinstance(exc, HTTPException):  # routing's own: an unknown path or method
        status, message = exc.status_code, str(exc.detail)
        kind = "ResourceNotFoundException" if status == 404 else _TYPES.get(status, "BadRequestException")
    else:
        error = as_deepserve_error(exc)
        if error.status >= 500 and not isinstance(exc, DeepserveError):
            log.error("management request failed", exc_info=exc)
        status, message = error.status, error.message
        kind = "ModelVersionNotFoundException" if isinstance(error, ModelVersionNotFoundError) else ""
        kind = kind or _TYPES.get(status, "InternalServerException")
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    return _json({"code": status, "type": kind, "message": message}, status, headers)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json_codec.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def _status(message: str, code: int = 200) -> Response:
    return _json({"status": message}, code)


class ManagementGuard:
    """The management token, then admission (not while draining; counted in flight for the drain)."""

    def __init__(self, app: ASGIApp, plane: DataPlane) -> None:
        self.app = app
        self.plane = plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        try:
            self.plane.check_management(auth)
            self.plane.admit(None, trusted=True)  # trusted: the management token stands for the inference one
        except DeepserveError as exc:
            await error_response(exc)(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.plane.release()


def _plane(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.plane
    return plane


def _registrar(request: Request) -> Registrar:
    registrar: Registrar = request.app.state.registrar
    return registrar


@router.options("/")
async def api_description(request: Request) -> Response:
    return _json(request.app.openapi())


@router.get("/models")
async def list_registered(request: Request) -> Response:
    params = request.query_params
    limit, token = integer(params, "limit"), integer(params, "next_page_token")
    return _json(list_models(_plane(request), 100 if limit is None else limit, token or 0))


@router.post("/models")
async def register(request: Request) -> Response:
    reg = Registration.parse(await _json_body(request) if _is_json(request) else dict(request.query_params))
    registrar = _registrar(request)
    placed = await registrar.place(reg)
    credentials = request.headers.get("authorization")
    if not reg.synchronous:
        registrar.load_later(placed, credentials)
        return _status("Processing worker updates...", 202)
    await registrar.load(placed, credentials)
    done = [f'Model "{p.name}" Version: {p.version} registered with 1 initial workers' for p in placed]
    return _status("; ".join(done))


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


async def _json_body(request: Request) -> dict[str, Any]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise PayloadTooLargeError(
                f"a registration body is a few fields; this one passed {MAX_BODY} bytes"
            )
    try:
        params = json_codec.loads(body) if body.strip() else {}
    except (json_codec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the body says application/json but is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise InvalidRequestError('the JSON body must be an object, e.g. {"url": "model.mar"}')
    return params


@router.get("/models/{name}")
@router.get("/models/{name}/{version}")
async def describe_model(request: Request, name: str, version: str | None = None) -> Response:
    plane, registrar = _plane(request), _registrar(request)
    started = request.app.state.started
    answer = []
    for entry in entries_for(plane, name, version):
        registered = registrar.registered_at.get(name)
        answer.append(describe(plane, entry, registered or started, at_startup=registered is None))
    return _json(answer)


@router.put("/models/{name}")
@router.put("/models/{name}/{version}")
async def scale(request: Request, name: str, version: str | None = None) -> Response:
    params = request.query_params
    version = version or params.get("model_version")
    entries_for(_plane(request), name, version)  # 404 for a model or version not there
    low = integer(params, "min_worker")
    low = 1 if low is None else low
    high = integer(params, "max_worker")
    high = low if high is None else high
    if high < low:
        raise InvalidRequestError("max_worker cannot be less than min_worker.")
    if low != 1:
        why = (f"min_worker=0 would leave model {name!r} without a worker: DELETE /models/{name} unloads it"
               if low < 1 else f"min_worker={low} cannot be met")  # fmt: skip
        raise InvalidRequestError(
            f"{why}; deepserve runs one worker per model (its batcher fills each run): scale out with "
            "replicas, or raise the batch size"
        )
    if not boolean(params, "synchronous", default=False):  # TorchServe's default here
        return _status("Processing worker updates...", 202)
    return _status(f"Workers scaled to 1 for model: {name}" + (f", version: {version}" if version else ""))


@router.delete("/models/{name}")
@router.delete("/models/{name}/{version}")
async def unregister(request: Request, name: str, version: str | None = None) -> Response:
    plane = _plane(request)
    entries_for(plane, name, version)
    versions = plane.registry.versions(name)
    if version is not None and len(versions) > 1:
        raise InvalidRequestError(
            f"deepserve loads and unloads a model's versions together ({name}: "
            f"{', '.join(map(str, versions))}); DELETE /models/{name} unregisters all of them"
        )
    await plane.unload_model(name, request.headers.get("authorization"))
    _registrar(request).forget(name)
    return _status(f'Model "{name}" unregistered')


@router.put("/models/{name}/{version}/set-default")
async def set_default(request: Request, name: str, version: str) -> Response:
    plane = _plane(request)
    [entry] = entries_for(plane, name, version)
    default = plane.registry.find(name).version
    if entry.version != default:
        raise InvalidRequestError(
            f"deepserve serves the highest version of a model by default ({name}: {default}); request "
            f"/predictions/{name}/{version} to use version {version}"
        )
    return _status(f'Default version successfully updated for model "{name}" to "{version}"')
