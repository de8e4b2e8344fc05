"""KServe v2 gRPC (``inference.GRPCInferenceService``) on grpc.aio, reusing tritonclient's stubs.

Thin like the HTTP routes: proto -> ``inference.<op>`` -> proto. Errors are mapped once, in
``_abort``, to the status code each ``DeepserveError`` carries. ``ModelStreamInfer`` streams one
response per generated chunk for text-generation models (``triton_final_response`` marks the
last) and answers other models once; stream errors go in ``error_message`` and the stream
stays open.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn, Protocol

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from deepserve.service import grpc_codec, inference
from deepserve.service.errors import (
    InvalidRequestError,
    ManagementDisabledError,
    ShuttingDownError,
    UnauthorizedError,
    as_deepserve_error,
)
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings
from deepserve.service.state import ServerState
from deepserve.service.v2_codec import InferResult

log = logging.getLogger(__name__)
MAX_MESSAGE = 2**31 - 1
Context = Any  # grpc.aio.ServicerContext (grpcio ships no type stubs)


async def _abort(context: Context, exc: BaseException) -> NoReturn:
    error = as_deepserve_error(exc)
    await context.abort(error.grpc_code, error.message)
    raise AssertionError("unreachable: abort raises")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, registry: Registry, settings: Settings, state: ServerState) -> None:
        self.registry, self.settings, self.state = registry, settings, state
        self._auth = f"Bearer {settings.auth_token}" if settings.auth_token else None

    def _check(self, context: Context) -> None:
        """Refusals shared by every inference call: draining, bearer token."""
        if self.state.draining:
            raise ShuttingDownError("server is shutting down; retry on another replica")
        if self._auth is not None:
            given = dict(context.invocation_metadata() or ()).get("authorization", "")
            if not hmac.compare_digest(str(given), self._auth):
                raise UnauthorizedError("missing or wrong bearer token in the 'authorization' metadata")

    # -- health and metadata -------------------------------------------------------------------
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.registry.ready and not self.state.draining)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        try:
            return pb.ModelReadyResponse(
                ready=inference.model_ready(self.registry, request.name, request.version)
            )
        except Exception as exc:
            await _abort(context, exc)

    async def ServerMetadata(self, request: Any, context: Context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**inference.server_metadata())

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        try:
            return grpc_codec.metadata(inference.model_metadata(self.registry, request.name, request.version))
        except Exception as exc:
            await _abort(context, exc)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        try:
            config = inference.model_config(self.registry, request.name, request.version)
            return pb.ModelConfigResponse(config=grpc_codec.model_config(config))
        except Exception as exc:
            await _abort(context, exc)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Context) -> Any:
        try:
            stats = inference.statistics(self.registry, request.name or None, request.version or None)
            return grpc_codec.statistics(stats)
        except Exception as exc:
            await _abort(context, exc)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> Any:
        rows = inference.repository_index(self.registry, request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**r) for r in rows])

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: Context) -> Any:
        try:
            self._check_management(context)
            await inference.load_model(self.registry, request.model_name)
            return pb.RepositoryModelLoadResponse()
        except Exception as exc:
            await _abort(context, exc)

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context: Context) -> Any:
        try:
            self._check_management(context)
            await inference.unload_model(self.registry, request.model_name)
            return pb.RepositoryModelUnloadResponse()
        except Exception as exc:
            await _abort(context, exc)

    def _check_management(self, context: Context) -> None:
        if not self.settings.enable_management:
            raise ManagementDisabledError("model load/unload is disabled (DEEPSERVE_ENABLE_MANAGEMENT)")
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        if not hmac.compare_digest(str(given), f"Bearer {self.settings.management_token}"):
            raise UnauthorizedError("load/unload needs 'authorization: Bearer <management token>' metadata")

    # -- inference -----------------------------------------------------------------------------
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        self.state.enter()
        try:
            with inference.RequestTracker(self.registry, request.model_name, "v2-grpc"):
                self._check(context)
                inference.admit(self.registry, request.model_name, request.model_version)
                decoded = grpc_codec.decode_request(request)
                # the client's deadline: work still queued when it passes is never computed
                result = await inference.infer(
                    self.registry, request.model_name, request.model_version, decoded,
                    deadline_s=context.time_remaining(),
                )  # fmt: skip
            return grpc_codec.encode_response(result)
        except Exception as exc:
            await _abort(context, exc)
        finally:
            self.state.leave()

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for request in request_iterator:
            self.state.enter()
            try:
                async for response in self._stream_one(request, context):
                    yield response
            except Exception as exc:
                error = as_deepserve_error(exc)
                yield pb.ModelStreamInferResponse(error_message=error.message)
            finally:
                self.state.leave()

    async def _stream_one(self, request: pb.ModelInferRequest, context: Context) -> AsyncIterator[Any]:
        name = request.model_name
        with inference.RequestTracker(self.registry, name, "v2-grpc"):
            self._check(context)
            decoded = grpc_codec.decode_request(request)
            entry = self.registry.get(name, request.model_version)
            if entry.engine is None:
                result = await inference.infer(self.registry, name, request.model_version, decoded)
                yield pb.ModelStreamInferResponse(infer_response=grpc_codec.encode_response(result))
                return
            async for response in self._generate(decoded, name, str(entry.version)):
                yield response

    async def _generate(self, decoded: Any, name: str, version: str) -> AsyncIterator[Any]:
        from deepserve.service.engine import SamplingParams

        texts = decoded.tensors.get("text_input")
        if texts is None or texts.size != 1:
            raise InvalidRequestError("send exactly one prompt in the BYTES input 'text_input'")
        raw = texts.reshape(-1)[0]
        prompt = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        keys = {"max_tokens": int, "temperature": float, "top_k": int, "top_p": float, "seed": int}
        params = SamplingParams(
            **{k: cast(decoded.parameters[k]) for k, cast in keys.items() if k in decoded.parameters}
        )
        async for chunk in inference.generate(self.registry, name, prompt, params):
            final = chunk.finish_reason is not None
            output = np.array([chunk.text.encode()], dtype=object)
            result = InferResult(name, version, {"text_output": output}, decoded.id)
            extra: dict[str, Any] = {"triton_final_response": final}
            if final:
                extra["finish_reason"] = chunk.finish_reason
            yield pb.ModelStreamInferResponse(infer_response=grpc_codec.encode_response(result, extra))


class GrpcServer(Protocol):
    """What ``serve`` needs of a gRPC server: grpc.aio's and the native front's share it."""

    front: str  # which one, for the log

    async def start(self) -> None: ...

    async def stop(self, grace: float | None) -> None: ...


def create_grpc_server(registry: Registry, settings: Settings, state: ServerState) -> GrpcServer:
    """The native front when it is built (``grpc_front``: auto / native), else grpc.aio."""
    from deepserve.service.grpc_native import NativeGrpcServer, native_front_available

    servicer = InferenceServicer(registry, settings, state)
    address = f"{settings.host}:{settings.grpc_port}"
    # the HTTP body limit applies here too: grpc refuses bigger messages before decoding
    max_receive = min(settings.max_body_bytes, MAX_MESSAGE)
    if settings.grpc_front == "native" or (settings.grpc_front == "auto" and native_front_available()):
        return NativeGrpcServer(servicer, settings.host, settings.grpc_port, max_receive)
    if settings.grpc_front == "auto":
        log.warning("the native gRPC front is not built (apt-get install libnghttp2-dev pkg-config, then "
                    "pip install -e . again; README, Set up); serving gRPC with grpc.aio")
    return _AioServer(servicer, address, max_receive)


class _AioServer:
    """grpc.aio, built and bound at ``start`` (on the running loop), like the native front."""

    front = "grpc.aio"

    def __init__(self, servicer: InferenceServicer, address: str, max_receive: int) -> None:
        self._servicer, self._address, self._max_receive = servicer, address, max_receive
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self._max_receive),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.so_reuseport", 0),  # a taken port must fail, not split the traffic
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self._servicer, self._server)
        if self._server.add_insecure_port(self._address) == 0:
            raise OSError(f"cannot bind gRPC on {self._address}")
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        if self._server is not None:
            await self._server.stop(grace)
