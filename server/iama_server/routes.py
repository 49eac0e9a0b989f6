"""HTTP routes. Each is three steps: build the call (``calls.py``: every 4xx about the body is
raised there), run it (``service.py``: admission, timeout, disconnect, the call's mode; streams:
``streaming.py``), render the outcome (``rendering.py``, pure).

``/health`` and ``/metrics`` stay open for probes and scrapers; everything under ``/v1``
requires an API key when the server has any. A request's ``model`` picks the base or one of its
adapters (``adapters.py``); admin keys load and unload adapters at run time (``/v1/adapters``).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from iama_server.accounting import Tally
from iama_server.auth import bearer
from iama_server.errors import APIError, ErrorCode
from iama_server.rendering import align_response, model_card, now, openai_response, rewards_listing
from iama_server.schemas import (
    AdapterDeleted,
    AdapterLoad,
    AlignRequest,
    AlignResponse,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    Health,
    ModelCardInfo,
    ModelList,
    RewardsList,
    UsageReport,
)
from iama_server.state import ServerState
from iama_server.streaming import StreamFormat, stream_response


def server_state(request: Request) -> ServerState:
    return request.app.state.iama


async def require_api_key(request: Request) -> None:
    """``Authorization: Bearer <key>``: whose key it is (``keys.py``), kept as ``request.state.key``
    for the request's limits, priority and usage; 401 for an unknown key."""
    policy = server_state(request).keys.lookup(bearer(request.headers.get("authorization", "")))
    if policy is None:
        raise APIError(
            401, "missing or invalid API key", code=ErrorCode.INVALID_API_KEY, headers={"WWW-Authenticate": "Bearer"}
        )
    request.state.key = policy


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route really gives (``errors.py``'s shape)."""
    what = {
        400: "invalid request: `error.param` names the field",
        401: "missing or invalid API key",
        403: "this key may not: a limit of its policy, a model it may not call, or an admin route",
        404: "unknown route or model",
        413: "request body over the server's limit",
        429: "at capacity: retry after `Retry-After` seconds",
        500: "unexpected server error (logged; no trace leaves the server)",
        502: "a remote reward's or judge's server failed",
        503: "starting, or failed and going away: retry after `Retry-After` seconds",
        504: "request exceeded the server's timeout",
    }
    return {s: {"model": ErrorResponse, "description": what[s]} for s in statuses}


probes = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=_errors(401, 404, 413, 500))
_RUN_ERRORS = _errors(400, 403, 429, 502, 503, 504)


@probes.get("/health", response_model=Health, responses={503: {"model": Health, "description": "not ready"}})
async def health(request: Request) -> JSONResponse:
    """200 once the engine is up and every reward is warm (``lifecycle.py``); 503 otherwise."""
    state = server_state(request)
    life = state.lifecycle
    if life.ready:
        return JSONResponse({"status": "ok", "model": state.model_name})
    return JSONResponse({"status": life.phase.value, "detail": life.detail}, status_code=503)


@probes.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    state = server_state(request)
    # iama's own (its gauges read the admission and the engine live), then vLLM's (vllm:*): one
    # text exposition, distinct names
    body = generate_latest(state.metrics.registry) + state.engine.prometheus_exposition()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@v1.get("/models", response_model=ModelList)
async def models(request: Request) -> dict[str, Any]:
    """The base, then every adapter served on it (``parent``: the base's id), as far as the
    caller's key may call them: a tenant does not learn another tenant's adapter names."""
    state = server_state(request)
    listed = state.calls.callable_models(request.state.key)
    return {"object": "list", "data": [model_card(m, state.models.base.name) for m in listed]}


@v1.get("/rewards", response_model=RewardsList, responses=_errors(400, 403, 404))
async def rewards(
    request: Request,
    model: Annotated[
        str | None, Query(max_length=256, description="the base or an adapter; omitted: the default")
    ] = None,
) -> dict[str, Any]:
    """What can be weighted for ``model`` (an adapter's come from its iama.json)."""
    state = server_state(request)
    served = state.calls.served_model(model, request.state.key)  # an adapter's rewards are its tenant's to see
    limits = {"max_budget": state.settings.max_budget, "max_tokens": state.settings.max_tokens}
    weights = state.calls.default_weights(served)
    return rewards_listing(served.rewards, served.card, weights, limits, state.lifecycle.ready_rewards)


def _admin_only(request: Request, what: str) -> None:
    if not request.state.key.admin:
        raise APIError(403, f"{what} is for admin keys only", code=ErrorCode.ADMIN_ONLY)


@v1.post("/adapters", response_model=ModelCardInfo, responses=_errors(400, 403, 503))
async def load_adapter(body: AdapterLoad, request: Request) -> dict[str, Any]:
    """Serve an IAMA adapter on the base from now on (admin keys only): its rewards warmed up,
    its weights loaded into the engine; then requests may name it as their ``model``."""
    _admin_only(request, "loading adapters")
    state = server_state(request)
    return model_card(await state.load_adapter(body.name, body.path), state.models.base.name)


@v1.delete("/adapters/{name}", response_model=AdapterDeleted, responses=_errors(400, 403))
async def unload_adapter(name: str, request: Request) -> dict[str, Any]:
    """Stop serving an adapter (admin keys only): no new request reaches it; the engine drops it
    once the requests running through it have finished (waited for up to the request timeout)."""
    _admin_only(request, "unloading adapters")
    await server_state(request).unload_adapter(name)
    return {"id": name, "object": "model", "deleted": True}


@v1.post("/align", response_model=AlignResponse, response_model_exclude_none=True, responses=_RUN_ERRORS)
async def align(body: AlignRequest, request: Request) -> AlignResponse:
    state, t0 = server_state(request), time.perf_counter()
    async with _recorded(request, body.model) as tally:
        tally.calls = [state.calls.align(body, request.state.request_id, request.state.key)]
        tally.outcomes = await state.service.complete(tally.calls, request.receive)
        (outcome,) = tally.outcomes
        tally.queue_s = outcome.queue_s
    return align_response(
        outcome,
        model=outcome.call.model.name,
        return_candidates=body.return_candidates,
        total_s=time.perf_counter() - t0,
    )


def _recorded(request: Request, model: str | None) -> AbstractAsyncContextManager[Tally]:
    """The request's usage row, written as the route leaves (``accounting.py``)."""
    state = server_state(request)
    route = request.scope["route"].path
    return state.accounting.recorded(request.state.key, route, model or state.model_name, request.state.request_id)


_WHEN = "ISO 8601 with a time zone, e.g. 2026-12-01T00:00:00Z (usage rows by when they finished)"
_ISO = {"format": "date-time"}


def _instant(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 time with a zone, or a 400 naming the parameter (no bare numbers: a Unix
    time given by mistake would be read as 1970)."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise APIError(400, f"not an ISO 8601 time: {value[:64]!r}", name) from None
    if when.tzinfo is None:
        raise APIError(400, "give a time zone (e.g. 2026-12-01T00:00:00Z)", name)
    return when


@v1.get("/usage", response_model=UsageReport, responses=_errors(400, 403))
async def usage(
    request: Request,
    key: Annotated[str | None, Query(max_length=64, description="one key's name; omitted: every key")] = None,
    since: Annotated[
        str | None, Query(max_length=64, description=_WHEN + ", inclusive", json_schema_extra=_ISO)
    ] = None,
    until: Annotated[
        str | None, Query(max_length=64, description=_WHEN + ", exclusive", json_schema_extra=_ISO)
    ] = None,
    group_by: Annotated[Literal["key", "model", "route", "day"] | None, Query()] = None,
) -> dict[str, Any]:
    """Summed usage (admin keys only): requests, prompt, generated and judge tokens, candidates."""
    state = server_state(request)
    _admin_only(request, "usage")
    if state.usage is None:
        raise APIError(400, "this server records no usage (usage_db is null)", "usage_db")
    start, end = _instant(since, "since"), _instant(until, "until")
    totals = await asyncio.to_thread(state.usage.totals, key, start, end, group_by)
    return {"object": "usage", "group_by": group_by, "data": [asdict(t) for t in totals]}


def _openai_responses(model: type) -> dict[int | str, dict[str, Any]]:
    event = {  # one server-sent event, as SSE parsers (and schemathesis) see it: an OpenAI chunk in `data`
        "type": "object",
        "description": "with `stream`: one event per OpenAI chunk (JSON in `data`), then `data: [DONE]`",
        "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
        "required": ["data"],
    }
    sse = {"text/event-stream": {"schema": event}}
    return {200: {"model": model, "content": sse}, **_RUN_ERRORS}


@v1.post("/completions", response_model=None, responses=_openai_responses(CompletionResponse))
async def completions(body: CompletionRequest, request: Request) -> Response:
    return await _openai(body, request)


@v1.post("/chat/completions", response_model=None, responses=_openai_responses(ChatCompletionResponse))
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await _openai(body, request)


async def _openai(body: CompletionRequest | ChatCompletionRequest, request: Request) -> Response:
    """Both OpenAI routes; they differ only in prompt encoding (the calls) and object names."""
    state, chat, rid = server_state(request), isinstance(body, ChatCompletionRequest), request.state.request_id
    async with _recorded(request, body.model) as tally:
        tally.calls = state.calls.openai(body, rid, request.state.key)
        model = tally.calls[0].model.name
        if body.stream:
            fmt = StreamFormat.of(body, model)
            return await stream_response(state.service, tally, fmt, request.receive, state.accounting)
        tally.outcomes = await state.service.complete(tally.calls, request.receive)
        tally.queue_s = tally.outcomes[0].queue_s
    return JSONResponse(openai_response(tally.outcomes, chat=chat, model=model, response_id=rid, created=now()))
