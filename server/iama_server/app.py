"""The FastAPI application: builds the per-app state, attaches routes, middleware and error
handlers, and runs the engine's lifespan. Routes live in ``routes.py``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response

from iama_server.engine import GenerationEngine
from iama_server.errors import error_type, install_error_handlers
from iama_server.routes import probes, v1
from iama_server.settings import ServerSettings
from iama_server.state import ServerState


def create_app(settings: ServerSettings | None = None, engine: GenerationEngine | None = None) -> FastAPI:
    """The server app; ``engine`` replaces vLLM (the tests' in-process tier passes a fake one)."""
    state = ServerState(settings or ServerSettings(), engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.scorer.start()
        starter = asyncio.create_task(state.start_engine())  # /health answers 503 meanwhile
        try:
            yield
        finally:
            starter.cancel()
            await state.scorer.stop()
            await asyncio.to_thread(state.engine.shutdown)

    app = FastAPI(title="IAMA server", version="0.1.0", lifespan=lifespan)
    app.state.iama = state
    install_error_handlers(app)
    app.middleware("http")(_observe)
    app.include_router(probes)
    app.include_router(v1)
    return app


async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Request count, latency and errors per route template (not per raw path: bounded labels)."""
    metrics = request.app.state.iama.metrics
    t0 = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    endpoint = route.path if route is not None else "unmatched"
    metrics.requests.labels(endpoint, str(response.status_code)).inc()
    metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
    if response.status_code >= 400:
        metrics.errors.labels(error_type(response.status_code)).inc()
    return response
