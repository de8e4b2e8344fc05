"""The data plane: one object owns the models and the request policy; transports only translate.

Built in the process entry point and handed to the HTTP app and the gRPC servicer, it holds the
registry (handlers, batchers, generation engines), the metrics, readiness and drain, and applies
the policy once for every transport:

- ``admit(credentials)`` ... ``release()`` (``guard`` as a ``with`` block): refuse while draining,
  check the bearer token, count the request in flight (what the drain waits for);
- ``call(model, version, protocol)``: look the model up once, admit the request to its queue, and
  account for it until its answer is complete (``service.call.Call``);
- management (load / unload) checks its own token, and only when it is turned on.

A transport decodes its wire format, calls one of these, encodes the result, and maps the typed
errors (each carries its HTTP status and gRPC code) once.

In a worker of ``deepserve serve --workers N`` (``worker``), the metrics are the workers' merged
view and readiness is the whole server's: the plane writes its own state on the board the
workers share (``service.worker_state``) as it changes, and is ready only while every worker is
and the supervisor is not draining. A worker still loading would otherwise answer 503 on its
share of the connections while its siblings said ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry

from deepserve.service import metadata
from deepserve.service.call import Call
from deepserve.service.codec_stage import CodecStage
from deepserve.service.errors import (
    ManagementDisabledError,
    ModelNotReadyError,
    ShuttingDownError,
    UnauthorizedError,
)
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings
from deepserve.service.state import ServerState
from deepserve.service.v2_codec import InferRequest, InferResult
from deepserve.service.worker_state import SAYS, WorkerBoard, WorkerSpec, WorkerState

if TYPE_CHECKING:
    from deepserve.service.engine import GenerationChunk, SamplingParams

log = logging.getLogger(__name__)
Credentials = str | bytes | None  # the request's Authorization header / metadata, as sent
IN_PROCESS = "python"  # the protocol label of calls made through the plane's own methods


class DataPlane:
    def __init__(
        self, settings: Settings, registry: Registry | None = None, *, worker: WorkerSpec | None = None
    ) -> None:
        """``registry``: serve handlers already added to it (tests, a program embedding the server)
        instead of loading the model store. ``worker``: this process is one of ``--workers``."""
        self.settings = settings
        self._load_store = registry is None
        self.worker = worker
        self._board = WorkerBoard(worker.board_path, worker.workers) if worker is not None else None
        metrics_dir = worker.metrics_dir if worker is not None else None
        self.registry = registry or Registry(settings, Metrics(CollectorRegistry(), metrics_dir))
        self.metrics = self.registry.metrics
        self.state = ServerState()
        self.stage = CodecStage(
            settings.codec_threads, settings.codec_inline_us / 1e6, max_waiting=settings.max_queue_size
        )
        self._token = _bearer(settings.auth_token)
        self._management_token = _bearer(settings.management_token)
        self._loader: asyncio.Task[None] | None = None
        self._load_error = ""
        self._started = False  # a worker's state goes on the board from start() on

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the models in the background: liveness answers at once, readiness when all are in."""
        self._started = True
        self._publish()
        self._loader = asyncio.create_task(self._load())

    async def _load(self) -> None:
        try:
            if self._load_store:
                await self.registry.load_store()
        except Exception as exc:  # an unreadable store: said once, and readiness says why
            log.exception("loading the model store %s failed", self.settings.model_store)
            self._load_error = f"loading the model store failed: {type(exc).__name__}: {exc}"
            self._publish()
            return
        self.registry.loading_done = True
        self._publish()
        entries = self.registry.entries()
        log.info("%d of %d model versions ready", sum(e.ready for e in entries), len(entries))

    async def loaded(self) -> None:
        """Wait for the start-up load (tests, ``deepserve up``)."""
        if self._loader is not None:
            await asyncio.shield(self._loader)

    def begin_drain(self) -> None:
        """Stop admitting (readiness false, new requests 503); the drain deadline starts now."""
        self.state.begin_drain(self.settings.drain_timeout_s)
        self._publish()

    async def wait_idle(self) -> bool:
        """True when the requests in flight finished within what is left of the drain."""
        return await self.state.wait_idle(self.state.drain_time_left())

    async def stop(self) -> None:
        """Drain the models (queued work finishes within what is left of the drain), then close."""
        self.begin_drain()
        try:
            if self._loader is not None:
                self._loader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._loader
            await self.wait_idle()
            await self.registry.stop(self.state.drain_time_left())
        finally:
            self.stage.close()

    async def __aenter__(self) -> DataPlane:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- health ----------------------------------------------------------------------------------
    @property
    def draining(self) -> bool:
        return self.state.draining

    def ready(self) -> bool:
        """Every model loaded and ready, and not draining: what readiness probes and health report.
        A worker: every worker so, and the supervisor not draining."""
        if not self.registry.ready or self.state.draining:
            return False
        board = self._board
        if board is None or self.worker is None:
            return True
        return not board.draining and board.first_not_ready(besides=self.worker.index) is None

    def why_not_ready(self) -> str:
        if self.state.draining or (self._board is not None and self._board.draining):
            return "server is shutting down"
        if self._load_error:
            return self._load_error
        if self.registry.ready and self._board is not None and self.worker is not None:
            peer = self._board.first_not_ready(besides=self.worker.index)
            if peer is not None:
                return f"worker {peer[0]} of {self.worker.workers} is {SAYS[peer[1]]}"
        broken = [f"{e.name}: {e.reason}" for e in self.registry.entries() if e.state == "failed"]
        return "models are not all ready" + (f"; failed: {'; '.join(broken)}" if broken else "")

    def _publish(self) -> None:
        """A worker writes its own state on the board, for its siblings' readiness."""
        if self._board is None or self.worker is None or not self._started:
            return
        if self.state.draining:
            state = WorkerState.DRAINING
        elif self.registry.ready:
            state = WorkerState.READY
        elif self.registry.loading_done or self._load_error:
            state = WorkerState.FAILED
        else:
            state = WorkerState.LOADING
        self._board.set(self.worker.index, state)

    def check_ready(self) -> None:
        if not self.ready():
            raise ModelNotReadyError(self.why_not_ready())

    # -- policy ----------------------------------------------------------------------------------
    @property
    def requires_token(self) -> bool:
        """Inference needs a bearer token (a transport may skip reading credentials otherwise)."""
        return self._token is not None

    def admit(self, credentials: Credentials, *, trusted: bool = False) -> None:
        """Admission to the server: not while draining, and with the bearer token when one is set.
        ``trusted``: no inference token asked (load / unload carry the management token, which
        they check; a program calling the plane itself). Counts as in flight until ``release``."""
        if self.state.draining:
            raise ShuttingDownError("server is shutting down; retry on another replica")
        if self._token is not None and not trusted and not _matches(credentials, self._token):
            raise UnauthorizedError("missing or wrong bearer token: send 'Authorization: Bearer <token>'")
        self.state.enter()

    def release(self) -> None:
        self.state.leave()

    @contextlib.contextmanager
    def guard(self, credentials: Credentials, *, trusted: bool = False) -> Iterator[None]:
        """``admit`` ... ``release`` around a block."""
        self.admit(credentials, trusted=trusted)
        try:
            yield
        finally:
            self.release()

    def call(self, model: str, version: str | None, protocol: str) -> Call:
        """One request to ``model``: use as ``with plane.call(...) as call: await call.infer(...)``."""
        return Call(self.registry, self.stage, model, version or None, protocol)

    # -- whole operations, for a program that embeds the server (transports use ``call``) ------
    # The program is trusted (no token), but drain refuses it and waits for it like any request.
    async def infer(
        self, model: str, request: InferRequest, version: str | None = None, deadline_s: float | None = None
    ) -> InferResult:
        with self.guard(None, trusted=True), self.call(model, version, IN_PROCESS) as call:
            return await call.infer(request, deadline_s)

    async def embed(self, model: str, inputs: list[Any]) -> tuple[np.ndarray, int]:
        with self.guard(None, trusted=True), self.call(model, None, IN_PROCESS) as call:
            return await call.embed(inputs)

    async def generate(
        self, model: str, prompt: str, params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        """The chunks as they are made; the request counts as one until its last chunk."""
        with self.guard(None, trusted=True), self.call(model, None, IN_PROCESS) as call:
            async with contextlib.aclosing(call.generate(await call.tokenize(prompt), params)) as chunks:
                async for chunk in chunks:
                    yield chunk

    def check_management(self, credentials: Credentials) -> None:
        """Load / unload: only when turned on, and only with the management token."""
        if not self.settings.enable_management:
            raise ManagementDisabledError(
                "model load/unload is disabled; start the server with DEEPSERVE_ENABLE_MANAGEMENT=true"
            )
        if self._management_token is None or not _matches(credentials, self._management_token):
            raise UnauthorizedError("load/unload needs 'Authorization: Bearer <management token>'")

    # -- metadata and repository -----------------------------------------------------------------
    def model_names(self) -> list[str]:
        return self.registry.names()

    def require_model(self, name: str) -> None:
        """Raises ``ModelNotFoundError`` for a name the server does not hold."""
        self.registry.find(name)

    def server_metadata(self) -> dict[str, Any]:
        return metadata.server_metadata()

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        return metadata.model_metadata(self.registry, name, version)

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return metadata.model_ready(self.registry, name, version)

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        return metadata.model_config(self.registry, name, version)

    def statistics(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        return metadata.statistics(self.registry, name, version)

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return self.registry.index(ready_only)

    async def load_model(self, name: str, credentials: Credentials) -> None:
        self.check_management(credentials)
        with self.guard(None, trusted=True):  # not while draining: nothing would stop what it starts
            entries = await self.registry.load(name)
        self.stage.forget(name)
        failed = [e for e in entries if e.state == "failed"]
        if failed:
            raise ModelNotReadyError(f"model {name!r} failed to load: {failed[0].reason}")

    async def unload_model(self, name: str, credentials: Credentials) -> None:
        self.check_management(credentials)
        with self.guard(None, trusted=True):
            await self.registry.unload(name)
        self.stage.forget(name)


def _bearer(token: str | None) -> bytes | None:
    return f"Bearer {token}".encode() if token else None


def _matches(given: Credentials, expected: bytes) -> bool:
    if given is None:
        return False
    raw = given.encode("latin-1", "replace") if isinstance(given, str) else given
    return hmac.compare_digest(raw, expected)
