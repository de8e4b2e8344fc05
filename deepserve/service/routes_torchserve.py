"""TorchServe-style inference API: ``/ping`` and ``/predictions/{model}[/{version}]``.

Bodies are decoded the way TorchServe's ``decode_input_request`` does, so a TorchServe user's
curl works unchanged: multipart -> the ``data`` field (else the first one), ``application/json``
-> parsed JSON, ``text/*`` -> str, anything else -> bytes. Query parameters become handler
parameters. Text-generation models stream their text with chunked transfer encoding.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response

from deepserve.service import json_codec
from deepserve.service.call import Call
from deepserve.service.errors import InvalidRequestError
from deepserve.service.http_deps import plane_of
from deepserve.service.http_stream import TrackedStreamingResponse
from deepserve.service.streaming import prime

router = APIRouter()
_PNG = b"\x89PNG\r\n\x1a\n"


@router.get("/ping")
async def ping(request: Request) -> Response:
    healthy = plane_of(request).ready()
    body = {"status": "Healthy" if healthy else "Unhealthy"}
    return Response(
        json_codec.dumps(body), status_code=200 if healthy else 500, media_type="application/json"
    )


def decode_value(data: bytes, content_type: str | None) -> Any:
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            return json_codec.loads(data)
        except (json_codec.DecodeError, UnicodeDecodeError) as exc:
            raise InvalidRequestError(f"body says application/json but is not valid JSON: {exc}") from None
    if kind.startswith("text/"):
        return data.decode("utf-8", "replace")
    return data


async def decode_body(request: Request) -> tuple[Any, str | None]:
    content_type = request.headers.get("content-type")
    if content_type and content_type.startswith("multipart/form-data"):
        async with request.form() as form:
            if not form:
                raise InvalidRequestError(
                    "multipart body has no fields; send the input as a field named 'data'"
                )
            field = form.get("data") or form.get("body") or next(iter(form.values()))
            if isinstance(field, UploadFile):
                raw = await field.read()
                return decode_value(raw, field.content_type), field.content_type
            return field, "text/plain"
    body = await request.body()
    if not body:
        raise InvalidRequestError(
            "empty request body; send the input as the body or a multipart 'data' field"
        )
    return decode_value(body, content_type), content_type


def encode_result(result: Any) -> Response:
    if isinstance(result, bytes):
        media = "image/png" if result.startswith(_PNG) else "application/octet-stream"
        return Response(result, media_type=media)
    if isinstance(result, str):
        return Response(result, media_type="text/plain; charset=utf-8")
    return Response(json_codec.dumps(result), media_type="application/json")


# PUT too: TorchServe's documented call is `curl .../predictions/m -T kitten.jpg`, and -T uploads with PUT
@router.api_route("/predictions/{model}/{version}", methods=["POST", "PUT"])
@router.api_route("/predictions/{model}", methods=["POST", "PUT"])
async def predictions(request: Request, model: str, version: str | None = None) -> Response:
    with plane_of(request).call(model, version, "torchserve") as call:  # a full queue refuses before the body
        body, content_type = await decode_body(request)
        params: dict[str, Any] = dict(request.query_params)
        if call.generates:
            stream = await prime(_stream(call, body, params))
            return TrackedStreamingResponse(call, stream, media_type="text/plain; charset=utf-8")
        result = await call.predict(body, content_type, params, dict(request.headers))
    return encode_result(result)


async def _stream(call: Call, body: Any, params: dict[str, Any]) -> AsyncIterator[bytes]:
    from deepserve.service.engine import SamplingParams
    from deepserve.service.sampling import penalties

    prompt, options = _prompt_and_options(body, params)
    options["frequency_penalty"], options["presence_penalty"] = penalties(
        call.generation_defaults, options.get("frequency_penalty"), options.get("presence_penalty")
    )
    async for chunk in call.generate(await call.tokenize(prompt), SamplingParams(**options)):
        yield chunk.text.encode()  # may be b"" (a held-back partial character); harmless


_SAMPLING_KEYS = {
    "max_tokens": int, "temperature": float, "top_k": int, "top_p": float, "seed": int,
    "frequency_penalty": float, "presence_penalty": float,
}  # fmt: skip


def _prompt_and_options(body: Any, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    merged = dict(params)
    if isinstance(body, dict):
        merged.update(body)
        body = body.get("prompt", body.get("text", body.get("data")))
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str):
        raise InvalidRequestError('send the prompt as a text body or JSON {"prompt": ..., "max_tokens": ...}')
    try:
        options = {k: cast(merged[k]) for k, cast in _SAMPLING_KEYS.items() if k in merged}
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"bad sampling parameter: {exc}") from None
    return body, options
