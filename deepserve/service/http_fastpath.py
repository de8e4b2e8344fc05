"""The KServe v2 infer route, as bare ASGI ahead of FastAPI's router: its one implementation.

Profiling the tiny-MLP case showed FastAPI's routing and dependency solving costing more per
request than decoding, batching and running the model together. This middleware answers
``POST /v2/models/{m}[/versions/{v}]/infer`` itself and hands every other request to FastAPI
untouched. The route is described in the OpenAPI document by ``routes_v2.INFER_OPENAPI``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from deepserve.service.codec_stage import size_kind
from deepserve.service.dataplane import DataPlane
from deepserve.service.errors import ClientClosedError, InvalidRequestError
from deepserve.service.http_errors import error_response
from deepserve.service.v2_codec import decode_request, encode_response, parse_header_length

_PREFIX, _SUFFIX = "/v2/models/", "/infer"
INLINE_BODY_BYTES = 16 * 1024  # decoded and encoded on the event loop without measuring
_JSON = [(b"content-type", b"application/json")]


def parse_infer_path(path: str) -> tuple[str, str | None] | None:
    """(model, version) for an infer path, else None."""
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    parts = path[len(_PREFIX) : -len(_SUFFIX)].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0], parts[2]
    return None


class FastInferMiddleware:
    def __init__(self, app: ASGIApp, plane: DataPlane) -> None:
        self.app = app
        self.plane = plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = parse_infer_path(scope["path"]) if scope["type"] == "http" else None
        if target is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            payload, json_length = await self._infer(scope, receive, *target)
        except Exception as exc:
            await error_response(exc, scope["path"])(scope, receive, send)
            return
        headers = list(_JSON) if json_length is None else [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(json_length).encode()),
        ]  # fmt: skip
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _infer(
        self, scope: Scope, receive: Receive, model: str, version: str | None
    ) -> tuple[bytes, int | None]:
        header_value = encoding = None
        for key, value in scope["headers"]:
            if key == b"inference-header-content-length":
                header_value = value.decode("latin-1")
            elif key == b"content-encoding":
                encoding = value
        if encoding not in (None, b"identity", b""):
            raise InvalidRequestError("compressed request bodies are not supported; send it uncompressed")
        with self.plane.call(model, version, "v2-http") as call:  # a full queue refuses before the body
            body = await _read_body(receive)
            header_length = parse_header_length(header_value, len(body))
            if len(body) <= INLINE_BODY_BYTES:  # microseconds: less than a hand-off to a thread
                request = decode_request(body, header_length)
                return encode_response(await call.infer(request), request)
            # a large JSON body takes milliseconds to parse: the codec stage decides where it runs
            size = size_kind("body", len(body))
            stage = self.plane.stage
            request = await stage.run(stage.cost(model, "decode", size), decode_request, body, header_length)
            result = await call.infer(request)
            return await stage.run(stage.cost(model, "encode", size), encode_response, result, request)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientClosedError("client disconnected before sending the whole body")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
