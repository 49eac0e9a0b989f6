"""HTTP routes. Each is three steps: validate into a call (the service), execute it (admission,
timeout, disconnect), render the outcome (``rendering.py``).

``/health`` and ``/metrics`` stay open for probes and scrapers; everything under ``/v1``
requires an API key when the server has any.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from iama_server.admission import cancel_on_disconnect_or_timeout
from iama_server.errors import APIError, ErrorCode
from iama_server.rendering import align_response, openai_response, rewards_listing, sse_events, stream_chunks
from iama_server.schemas import AlignRequest, AlignResponse, ChatCompletionRequest, CompletionRequest, new_id, now
from iama_server.service import AlignmentCall, Outcome
from iama_server.state import ServerState


def server_state(request: Request) -> ServerState:
    return request.app.state.iama


async def require_api_key(request: Request) -> None:
    """``Authorization: Bearer <key>`` against the configured keys, in constant time."""
    keys = server_state(request).api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not token or not any(secrets.compare_digest(token, k) for k in keys):
        raise APIError(
            401, "missing or invalid API key", code=ErrorCode.INVALID_API_KEY, headers={"WWW-Authenticate": "Bearer"}
        )


async def execute(state: ServerState, request: Request, call: AlignmentCall) -> Outcome:
    """Admission (429 when full), then the service's run under the request timeout (504) and
    the client's attention (disconnect aborts vLLM)."""
    async with state.admission.slot() as queued:
        state.metrics.queue_depth.set(state.admission.waiting)
        state.metrics.in_flight.set(state.admission.active)
        try:
            outcome = await cancel_on_disconnect_or_timeout(
                state.service.run(call), request.receive, state.settings.request_timeout_s
            )
        finally:
            state.metrics.in_flight.set(state.admission.active - 1)
        outcome.queue_s = queued
        return outcome


probes = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@probes.get("/health")
async def health(request: Request) -> JSONResponse:
    state = server_state(request)
    if state.engine.ready:
        return JSONResponse({"status": "ok", "model": state.model_name})
    status = "error" if state.engine_error else "starting"
    return JSONResponse({"status": status, "detail": state.engine_error}, status_code=503)


@probes.get("/metrics")
async def metrics(request: Request) -> Response:
    state = server_state(request)
    state.metrics.queue_depth.set(state.admission.waiting)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@v1.get("/models")
async def models(request: Request) -> dict[str, Any]:
    state = server_state(request)
    model = {"id": state.model_name, "object": "model", "created": 0, "owned_by": "iama", "root": state.model_path}
    return {"object": "list", "data": [model]}


@v1.get("/rewards")
async def rewards(request: Request) -> dict[str, Any]:
    state = server_state(request)
    limits = {"max_budget": state.settings.max_budget, "max_tokens": state.settings.max_tokens}
    return rewards_listing(state.rewards, state.card, state.service.default_weights(), limits)


@v1.post("/align", response_model=AlignResponse, response_model_exclude_none=True)
async def align(body: AlignRequest, request: Request) -> AlignResponse:
    state, t0 = server_state(request), time.perf_counter()
    call = state.service.align_call(body)  # every 4xx about the body is raised here
    outcome = await execute(state, request, call)
    return align_response(
        outcome, model=state.model_name, return_candidates=body.return_candidates, total_s=time.perf_counter() - t0
    )


@v1.post("/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    return await _openai(body, request)


@v1.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await _openai(body, request)


async def _openai(body: CompletionRequest | ChatCompletionRequest, request: Request) -> Response:
    """Both OpenAI routes; they differ only in prompt encoding (the service) and object names."""
    state = server_state(request)
    call = state.service.openai_call(body)
    outcome = await execute(state, request, call)
    chat = isinstance(body, ChatCompletionRequest)
    rid, created = new_id("chatcmpl" if chat else "cmpl"), now()
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        chunks = stream_chunks(
            outcome, chat=chat, model=state.model_name, response_id=rid, created=created, include_usage=include_usage
        )
        return StreamingResponse(
            _iterate(chunks), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    return JSONResponse(openai_response(outcome, chat=chat, model=state.model_name, response_id=rid, created=created))


async def _iterate(chunks: list[dict[str, Any]]):  # -> AsyncIterator[bytes]
    for event in sse_events(chunks):
        yield event
