"""``create_app(plane)``: the HTTP transport, a FastAPI application over one ``DataPlane``.

The app owns no models: the process entry point builds the data plane, starts it, hands it here
and to the gRPC servicer, and drains it on SIGTERM. The app only translates HTTP to data-plane
calls and typed errors to each protocol's error body. Nothing is built at import time.

Our three middlewares wrap the FastAPI application instead of joining its middleware stack: the
error boundary, then the guard, then the infer fast path, then FastAPI. So an infer request never
enters FastAPI's own layers (Starlette's ServerErrorMiddleware, FastAPI's body limit and exception
middleware, the router), which it does not need: the guard applies the body limit and the fast
path answers its own errors. Every other request goes through all of them, and a boundary inside
FastAPI's stack answers a route's exception before Starlette's ServerErrorMiddleware would.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from starlette.responses import Response
from starlette.types import ASGIApp

from deepserve.service import routes_openai, routes_torchserve, routes_v2
from deepserve.service.dataplane import DataPlane
from deepserve.service.http_boundary import ErrorBoundaryMiddleware
from deepserve.service.http_errors import install_error_handlers
from deepserve.service.http_fastpath import FastInferMiddleware
from deepserve.service.http_guard import GuardMiddleware
from deepserve.service.metadata import SERVER_VERSION

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def create_app(plane: DataPlane) -> ASGIApp:
    app = FastAPI(title="deepserve", version=SERVER_VERSION, docs_url=None, redoc_url=None,
                  **no_fastapi_telemetry())
    app.state.plane = plane
    install_error_handlers(app)
    app.include_router(routes_v2.router)
    app.include_router(routes_torchserve.router)
    app.include_router(routes_openai.router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        return Response(plane.metrics.render(), media_type=PROMETHEUS_TEXT)

    _describe_infer(app)
    app.add_middleware(ErrorBoundaryMiddleware)  # a route's exception: ours to answer, not Starlette's
    return ErrorBoundaryMiddleware(GuardMiddleware(FastInferMiddleware(app, plane), plane))



def no_fastapi_telemetry() -> dict[str, Any]:
    """FastAPI 0.142 on makes OpenTelemetry spans of its own once a tracer provider is set (a SERVER
    span per HTTP request, health probes included, and spans for dependencies and endpoints): off.
    The request spans are deepserve's (``service.tracing``), the same for HTTP and gRPC."""
    if "telemetry" not in inspect.signature(FastAPI).parameters:  # an older FastAPI makes none
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def _describe_infer(app: FastAPI) -> None:
    """The OpenAPI document, with the infer operations the fast path answers ahead of the router."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema["paths"] = {**routes_v2.INFER_OPENAPI, **schema.get("paths", {})}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
