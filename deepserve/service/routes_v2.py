"""KServe v2 / Open Inference Protocol over HTTP, with the Triton extensions real tools call.

Thin: decode -> ``DataPlane`` -> encode. ``POST .../infer`` is answered ahead of the router by
``http_fastpath`` (its one implementation); ``INFER_OPENAPI`` describes it in the OpenAPI document.
``/v2/models/stats`` is declared before ``/v2/models/{model}`` so it is never taken for a model
called "stats".
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from deepserve.service import json_codec
from deepserve.service.errors import InvalidRequestError, ModelNotReadyError
from deepserve.service.http_deps import plane_of

router = APIRouter()

_TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}}, "data": {"type": "array"},
        "parameters": {"type": "object"},
    },
}  # fmt: skip
_INFER_BODY = {
    "required": True,
    "description": "KServe v2 inference request: JSON, or with the binary tensor extension a JSON header "
    "(its length in Inference-Header-Content-Length) followed by the raw tensors",
    "content": {"application/json": {"schema": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"}, "parameters": {"type": "object"},
            "inputs": {"type": "array", "items": _TENSOR},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        },
    }}},
}  # fmt: skip


def _path_parameter(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


INFER_OPENAPI: dict[str, dict[str, Any]] = {
    path: {"post": {
        "summary": "Infer", "operationId": f"infer_{suffix}", "requestBody": _INFER_BODY,
        "parameters": [_path_parameter(p) for p in params],
        "responses": {"200": {"description": "KServe v2 inference response"}},
    }}
    for path, suffix, params in (
        ("/v2/models/{model}/infer", "model", ["model"]),
        ("/v2/models/{model}/versions/{version}/infer", "model_version", ["model", "version"]),
    )
}  # fmt: skip


def _json(content: Any, status: int = 200) -> Response:
    return Response(json_codec.dumps(content), status_code=status, media_type="application/json")


@router.get("/v2/health/live")
async def live() -> Response:
    return Response(status_code=200)


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    plane_of(request).check_ready()
    return Response(status_code=200)


@router.get("/v2")
async def server_metadata(request: Request) -> Response:
    return _json(plane_of(request).server_metadata())


@router.get("/v2/models/stats")
async def all_stats(request: Request) -> Response:
    return _json(plane_of(request).statistics())


@router.get("/v2/models/{model}/versions/{version}/stats")
@router.get("/v2/models/{model}/stats")
async def model_stats(request: Request, model: str, version: str | None = None) -> Response:
    return _json(plane_of(request).statistics(model, version))


@router.get("/v2/models/{model}/versions/{version}/ready")
@router.get("/v2/models/{model}/ready")
async def model_ready(request: Request, model: str, version: str | None = None) -> Response:
    if not plane_of(request).model_ready(model, version):
        raise ModelNotReadyError(f"model {model!r} is not ready")
    return Response(status_code=200)


@router.get("/v2/models/{model}/versions/{version}/config")
@router.get("/v2/models/{model}/config")
async def model_config(request: Request, model: str, version: str | None = None) -> Response:
    return _json(plane_of(request).model_config(model, version))


@router.get("/v2/models/{model}/versions/{version}")
@router.get("/v2/models/{model}")
async def model_metadata(request: Request, model: str, version: str | None = None) -> Response:
    return _json(plane_of(request).model_metadata(model, version))


@router.post("/v2/repository/index")
async def repository_index(request: Request) -> Response:
    options = await _json_body(request)
    ready_only = bool(options.get("ready", False)) if isinstance(options, dict) else False
    return _json(plane_of(request).repository_index(ready_only))


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        return json_codec.loads(body)
    except (json_codec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None


@router.post("/v2/repository/models/{model}/load")
async def load(request: Request, model: str) -> Response:
    plane_of(request).check_management(request.headers.get("authorization"))  # before the body is read
    options = await _json_body(request)
    params = options.get("parameters") if isinstance(options, dict) else None
    if params:
        raise InvalidRequestError(
            "load takes no parameters: models load only from the model store, never from uploaded files"
        )
    await plane_of(request).load_model(model, request.headers.get("authorization"))
    return _json({})


@router.post("/v2/repository/models/{model}/unload")
async def unload(request: Request, model: str) -> Response:
    await plane_of(request).unload_model(model, request.headers.get("authorization"))
    return _json({})
