"""The FastAPI application: builds the per-app state, attaches routes, middleware and error
handlers, and runs the engine's lifespan. Routes live in ``routes.py``."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response

from iama_server.body_limit import BodyLimit
from iama_server.engine import GenerationEngine
from iama_server.errors import error_type, install_error_handlers
from iama_server.keys import install_sighup, watch_keys_file
from iama_server.playground import router as playground
from iama_server.routes import probes, v1
from iama_server.settings import ServerSettings
from iama_server.state import ServerState

log = logging.getLogger("iama.server")


def create_app(settings: ServerSettings | None = None, engine: GenerationEngine | None = None) -> FastAPI:
    """The server app; ``engine`` replaces vLLM (the tests' in-process tier passes a fake one)."""
    state = ServerState(settings or ServerSettings(), engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for scorer in state.all_scorers():  # the base's, and each adapter's own
            scorer.start()
        state.accounting.start()
        starter = asyncio.create_task(state.start())  # /health answers 503 until READY
        watcher = None
        if state.settings.keys_file is not None:  # reloaded on change and on SIGHUP (keys.py)
            watcher = asyncio.create_task(watch_keys_file(state.keys, state.settings.keys_reload_s))
            install_sighup(asyncio.get_running_loop(), state.keys)
        try:
            yield
        finally:
            starter.cancel()
            if watcher is not None:
                watcher.cancel()
            for scorer in state.all_scorers():
                await scorer.stop()
            await state.limiter.aclose()
            await asyncio.to_thread(state.engine.shutdown)
            state.accounting.close()
            if state.usage is not None:
                state.usage.dispose()

    app = FastAPI(title="IAMA server", version="0.1.0", lifespan=lifespan)
    app.state.iama = state
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=state.settings.max_request_bytes)
    app.middleware("http")(_observe)  # added last: outermost, so it counts the 413s too
    app.include_router(probes)
    app.include_router(v1)
    if state.settings.playground:
        app.include_router(playground)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, minus the 422 it documents for every body: bad input is a 400 here, in
    the shape of ``ErrorResponse`` (``errors.py``), and the schema must say what really happens."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for path in schema["paths"].values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        for unused in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(unused, None)
        app.openapi_schema = schema
    return app.openapi_schema


_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(header: str | None) -> str:
    """The client's ``X-Request-Id`` when it is a sane token, else a new one."""
    return header if header is not None and _CLIENT_ID.fullmatch(header) else f"req-{uuid.uuid4().hex}"


async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """A request id for every request (``X-Request-Id`` in, out, in the body's ``id`` and in the
    log), and request count, latency and errors per route template (bounded labels)."""
    metrics = request.app.state.iama.metrics
    rid = request.state.request_id = request_id(request.headers.get("x-request-id"))
    t0 = time.perf_counter()
    response = await call_next(request)
    elapsed = time.perf_counter() - t0
    response.headers["X-Request-Id"] = rid
    route = request.scope.get("route")
    endpoint = route.path if route is not None else "unmatched"
    metrics.requests.labels(endpoint, str(response.status_code)).inc()
    metrics.latency.labels(endpoint).observe(elapsed)
    if response.status_code >= 400:
        metrics.errors.labels(error_type(response.status_code)).inc()
    log.info("request %s: %s %s -> %d in %.3f s", rid, request.method, request.url.path, response.status_code, elapsed)
    return response
