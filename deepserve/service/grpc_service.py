"""KServe v2 gRPC (``inference.GRPCInferenceService``) over the data plane, on tritonclient's stubs.

Thin like the HTTP routes: proto -> ``DataPlane`` -> proto; the server itself (grpc.aio, TLS,
health, reflection) is built in ``grpc_server``. Errors are mapped once, by ``_mapped``, to the
status code each ``DeepserveError`` carries. ``ModelStreamInfer`` streams one response per
generated chunk for text-generation models (``triton_final_response`` marks the last) and
answers other models once; stream errors go in ``error_message`` and the stream stays open.

With traces or the access log on, each inference request hands its method, trace metadata
(``traceparent``) and ``x-request-id`` to its model call (``call.arriving``).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from deepserve.service import grpc_codec, tracing
from deepserve.service.call import Call, Incoming, arrived, arriving
from deepserve.service.dataplane import Credentials, DataPlane
from deepserve.service.errors import InvalidRequestError, as_deepserve_error
from deepserve.service.v2_codec import InferRequest, InferResult

Context = Any  # grpc.aio.ServicerContext (grpcio ships no type stubs)
R = TypeVar("R")
_SAMPLING_KEYS = {"max_tokens": int, "temperature": float, "top_k": int, "top_p": float, "seed": int}
_SERVICE = "/inference.GRPCInferenceService/"


async def _abort(context: Context, exc: BaseException) -> NoReturn:
    error = as_deepserve_error(exc)
    await context.abort(error.grpc_code, error.message)
    raise AssertionError("unreachable: abort raises")


def _mapped(
    method: Callable[[Any, Any, Context], Awaitable[R]],
) -> Callable[[Any, Any, Context], Awaitable[R]]:
    """A unary method whose errors end the call with their own status code and message."""

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: Context) -> R:
        try:
            return await method(self, request, context)
        except Exception as exc:
            await _abort(context, exc)

    return unary


def _credentials(context: Context) -> Credentials:
    return dict(context.invocation_metadata() or ()).get("authorization")


def _incoming(context: Context, method: str) -> Incoming:
    wanted = tracing.header_names()
    metadata = context.invocation_metadata() or ()
    carrier = {key: value for key, value in metadata if key in wanted and isinstance(value, str)}
    request_id = next((v for k, v in metadata if k == "x-request-id" and isinstance(v, str)), None)
    return Incoming("POST", _SERVICE + method, request_id, carrier or None, grpc=True)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.access_log = plane.settings.access_log

    # -- health and metadata -------------------------------------------------------------------
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    @_mapped
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: Any, context: Context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    @_mapped
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        return grpc_codec.metadata(self.plane.model_metadata(request.name, request.version))

    @_mapped
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        config = self.plane.model_config(request.name, request.version)
        return pb.ModelConfigResponse(config=grpc_codec.model_config(config))

    @_mapped
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Context) -> Any:
        return grpc_codec.statistics(self.plane.statistics(request.name or None, request.version or None))

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> Any:
        rows = self.plane.repository_index(request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**r) for r in rows])

    @_mapped
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: Context) -> Any:
        await self.plane.load_model(request.model_name, _credentials(context))
        return pb.RepositoryModelLoadResponse()

    @_mapped
    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context: Context) -> Any:
        await self.plane.unload_model(request.model_name, _credentials(context))
        return pb.RepositoryModelUnloadResponse()

    # -- inference -----------------------------------------------------------------------------
    @_mapped
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        plane = self.plane
        token = arriving(_incoming(context, "ModelInfer")) if tracing.active or self.access_log else None
        call = plane.call(request.model_name, request.model_version, "v2-grpc")
        try:
            with plane.guard(_credentials(context) if plane.requires_token else None), call:
                decoded = grpc_codec.decode_request(request)
                # the client's deadline: work still queued when it passes is never computed
                result = await call.infer(decoded, deadline_s=context.time_remaining())
        finally:
            if token is not None:
                arrived(token)
        return grpc_codec.encode_response(result)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        plane, credentials = self.plane, _credentials(context)
        observed = tracing.active or self.access_log  # the stream's requests share its metadata
        token = arriving(_incoming(context, "ModelStreamInfer")) if observed else None
        try:
            async for request in request_iterator:
                call = plane.call(request.model_name, request.model_version, "v2-grpc")
                try:
                    with plane.guard(credentials), call:
                        decoded = grpc_codec.decode_request(request)
                        if not call.generates:
                            answer = grpc_codec.encode_response(await call.infer(decoded))
                            yield pb.ModelStreamInferResponse(infer_response=answer)
                            continue
                        async for response in _generate(call, decoded):
                            yield response
                except Exception as exc:
                    yield pb.ModelStreamInferResponse(error_message=as_deepserve_error(exc).message)
        finally:
            if token is not None:
                arrived(token)


async def _generate(call: Call, decoded: InferRequest) -> AsyncIterator[pb.ModelStreamInferResponse]:
    from deepserve.service.engine import SamplingParams
    from deepserve.service.sampling import penalties

    texts = decoded.tensors.get("text_input")
    if texts is None or texts.size != 1:
        raise InvalidRequestError("send exactly one prompt in the BYTES input 'text_input'")
    raw = texts.reshape(-1)[0]
    prompt = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    sent = decoded.parameters
    frequency, presence = penalties(call.generation_defaults, sent.get("frequency_penalty"),
                                    sent.get("presence_penalty"))  # fmt: skip
    params = SamplingParams(
        **{k: cast(sent[k]) for k, cast in _SAMPLING_KEYS.items() if k in sent},
        frequency_penalty=frequency, presence_penalty=presence,
    )
    async for chunk in call.generate(await call.tokenize(prompt), params):
        final = chunk.finish_reason is not None
        output = np.array([chunk.text.encode()], dtype=object)
        result = InferResult(call.model, call.version, {"text_output": output}, decoded.id)
        extra: dict[str, Any] = {"triton_final_response": final}
        if final:
            extra["finish_reason"] = chunk.finish_reason
        yield pb.ModelStreamInferResponse(infer_response=grpc_codec.encode_response(result, extra))
