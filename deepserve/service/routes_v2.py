"""KServe v2 / Open Inference Protocol over HTTP, with the Triton extensions real tools call.

Thin: decode -> ``inference.<op>`` -> encode. ``/v2/models/stats`` is declared before
``/v2/models/{model}`` so it is never taken for a model called "stats".
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from deepserve.service import inference, json_codec
from deepserve.service.errors import (
    InvalidRequestError,
    ManagementDisabledError,
    ModelNotReadyError,
    UnauthorizedError,
)
from deepserve.service.registry import Registry
from deepserve.service.v2_codec import decode_request, encode_response, parse_header_length

router = APIRouter()
HEADER_LENGTH = "inference-header-content-length"


def _json(content: Any, status: int = 200) -> Response:
    return Response(json_codec.dumps(content), status_code=status, media_type="application/json")


def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


# The hot path is declared first: routes are matched in order.
@router.post("/v2/models/{model}/versions/{version}/infer")
@router.post("/v2/models/{model}/infer")
async def infer(request: Request, model: str, version: str | None = None) -> Response:
    registry = _registry(request)
    with inference.RequestTracker(registry, model, "v2-http"):
        body = await request.body()
        if request.headers.get("content-encoding", "identity") not in ("identity", ""):
            raise InvalidRequestError("compressed request bodies are not supported; send it uncompressed")
        header_length = parse_header_length(request.headers.get(HEADER_LENGTH), len(body))
        infer_request = decode_request(body, header_length)
        result = await inference.infer(registry, model, version, infer_request)
        payload, json_length = encode_response(result, infer_request)
    if json_length is None:
        return Response(payload, media_type="application/json")
    return Response(
        payload,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_length)},
    )


@router.get("/v2/health/live")
async def live() -> Response:
    return Response(status_code=200)


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    if request.app.state.server.draining:
        raise ModelNotReadyError("server is shutting down")
    registry = _registry(request)
    if not registry.ready:
        broken = [f"{e.name}: {e.reason}" for e in registry.entries() if e.state == "failed"]
        raise ModelNotReadyError(
            "models are not all ready" + (f"; failed: {'; '.join(broken)}" if broken else "")
        )
    return Response(status_code=200)


@router.get("/v2")
async def server_metadata() -> Response:
    return _json(inference.server_metadata())


@router.get("/v2/models/stats")
async def all_stats(request: Request) -> Response:
    return _json(inference.statistics(_registry(request)))


@router.get("/v2/models/{model}/versions/{version}/stats")
@router.get("/v2/models/{model}/stats")
async def model_stats(request: Request, model: str, version: str | None = None) -> Response:
    return _json(inference.statistics(_registry(request), model, version))


@router.get("/v2/models/{model}/versions/{version}/ready")
@router.get("/v2/models/{model}/ready")
async def model_ready(request: Request, model: str, version: str | None = None) -> Response:
    if not inference.model_ready(_registry(request), model, version):
        raise ModelNotReadyError(f"model {model!r} is not ready")
    return Response(status_code=200)


@router.get("/v2/models/{model}/versions/{version}/config")
@router.get("/v2/models/{model}/config")
async def model_config(request: Request, model: str, version: str | None = None) -> Response:
    return _json(inference.model_config(_registry(request), model, version))


@router.get("/v2/models/{model}/versions/{version}")
@router.get("/v2/models/{model}")
async def model_metadata(request: Request, model: str, version: str | None = None) -> Response:
    return _json(inference.model_metadata(_registry(request), model, version))


@router.post("/v2/repository/index")
async def repository_index(request: Request) -> Response:
    options = await _json_body(request)
    ready_only = bool(options.get("ready", False)) if isinstance(options, dict) else False
    return _json(inference.repository_index(_registry(request), ready_only))


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        return json_codec.loads(body)
    except (json_codec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None


def _check_management(request: Request) -> None:
    settings = request.app.state.settings
    if not settings.enable_management:
        raise ManagementDisabledError(
            "model load/unload is disabled; start the server with DEEPSERVE_ENABLE_MANAGEMENT=true"
        )
    expected = f"Bearer {settings.management_token}".encode()
    given = request.headers.get("authorization", "").encode()
    if not hmac.compare_digest(given, expected):
        raise UnauthorizedError("load/unload needs 'Authorization: Bearer <management token>'")


@router.post("/v2/repository/models/{model}/load")
async def load(request: Request, model: str) -> Response:
    _check_management(request)
    options = await _json_body(request)
    params = options.get("parameters") if isinstance(options, dict) else None
    if params:
        raise InvalidRequestError(
            "load takes no parameters: models load only from the model store, never from uploaded files"
        )
    await inference.load_model(_registry(request), model)
    return _json({})


@router.post("/v2/repository/models/{model}/unload")
async def unload(request: Request, model: str) -> Response:
    _check_management(request)
    await inference.unload_model(_registry(request), model)
    return _json({})
