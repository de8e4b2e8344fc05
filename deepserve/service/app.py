"""``create_app(settings, registry=None)``: the FastAPI application with everything on ``app.state``.

Lifespan: models load in the background (liveness answers at once, readiness when all are
loaded), and on shutdown the registry drains within ``drain_timeout_s``. Nothing is built at
import time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry
from starlette.responses import Response

from deepserve.service import routes_openai, routes_torchserve, routes_v2
from deepserve.service.http_boundary import ErrorBoundaryMiddleware
from deepserve.service.http_errors import install_error_handlers
from deepserve.service.http_fastpath import FastInferMiddleware
from deepserve.service.http_guard import GuardMiddleware
from deepserve.service.inference import SERVER_VERSION
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings
from deepserve.service.state import ServerState

log = logging.getLogger(__name__)
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def create_app(
    settings: Settings, registry: Registry | None = None, state: ServerState | None = None
) -> FastAPI:
    """Build the app; pass ``registry`` (tests) to serve handlers already added to it."""
    if registry is None:
        registry = Registry(settings, Metrics(CollectorRegistry()))
        load_store = True
    else:
        load_store = False
    server_state = state or ServerState()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(_load(registry, load_store))
        app.state.loader = loader
        try:
            yield
        finally:
            server_state.begin_drain(settings.drain_timeout_s)  # started by a signal, or now
            loader.cancel()
            await server_state.wait_idle(server_state.drain_time_left())
            await registry.stop(server_state.drain_time_left())

    app = FastAPI(title="deepserve", version=SERVER_VERSION, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.registry = registry
    app.state.server = server_state
    install_error_handlers(app)
    app.include_router(routes_v2.router)
    app.include_router(routes_torchserve.router)
    app.include_router(routes_openai.router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        return Response(registry.metrics.render(), media_type=PROMETHEUS_TEXT)

    app.add_middleware(FastInferMiddleware, registry=registry)  # inner: runs after the guard
    app.add_middleware(GuardMiddleware, settings=settings, state=server_state)
    app.add_middleware(ErrorBoundaryMiddleware)  # outermost of ours: catches what the others raise
    return app


async def _load(registry: Registry, load_store: bool) -> None:
    if load_store:
        await registry.load_store()
    registry.loading_done = True
    ready = sum(e.ready for e in registry.entries())
    log.info("%d of %d model versions ready", ready, len(registry.entries()))
