"""HTTP routes. Each is three steps: validate into a call (the service), execute it (admission,
timeout, disconnect), render the outcome (``rendering.py``).

``/health`` and ``/metrics`` stay open for probes and scrapers; everything under ``/v1``
requires an API key when the server has any.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from iama_server.admission import cancel_on_disconnect_or_timeout
from iama_server.auth import bearer, key_ok
from iama_server.engine import InvalidEngineInput
from iama_server.errors import APIError, ClientGone, ErrorCode, error_type
from iama_server.rendering import (
    SSE_DONE,
    align_response,
    chunk_base,
    openai_response,
    piece_logprobs,
    rewards_listing,
    sse,
    sse_events,
    stream_chunk,
    stream_chunks,
    usage,
    usage_chunk,
)
from iama_server.schemas import (
    AlignRequest,
    AlignResponse,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    Health,
    ModelList,
    RewardsList,
    Usage,
    now,
)
from iama_server.service import AlignmentCall, Outcome
from iama_server.state import ServerState

log = logging.getLogger("iama.server")


def server_state(request: Request) -> ServerState:
    return request.app.state.iama


async def require_api_key(request: Request) -> None:
    """``Authorization: Bearer <key>`` against the configured keys, in constant time."""
    if not key_ok(server_state(request).api_keys, bearer(request.headers.get("authorization", ""))):
        raise APIError(
            401, "missing or invalid API key", code=ErrorCode.INVALID_API_KEY, headers={"WWW-Authenticate": "Bearer"}
        )


async def execute(state: ServerState, request: Request, calls: list[AlignmentCall]) -> list[Outcome]:
    """Admission by the request's cost over all its prompts (429 when the queue is full), then
    the service's runs, side by side, under the request timeout (504) and the client's
    attention (a disconnect aborts them in vLLM)."""
    cost = state.service.cost(calls)
    async with state.admission.slot(cost) as queued:
        state.metrics.queue_depth.set(state.admission.waiting)
        state.metrics.in_flight.set(state.admission.active)
        state.metrics.tokens_in_use.set(state.admission.tokens_in_use)

        async def run_all() -> list[Outcome]:
            return list(await asyncio.gather(*(state.service.run(call) for call in calls)))

        try:
            timeout_s = state.settings.request_timeout_s
            outcomes = await cancel_on_disconnect_or_timeout(run_all(), request.receive, timeout_s)
        except ClientGone:
            state.metrics.cancelled.labels("disconnect").inc()
            log.info("request %s: client went away; generation aborted", calls[0].request_id)
            raise
        except APIError as exc:
            if exc.code == ErrorCode.TIMEOUT:
                state.metrics.cancelled.labels("timeout").inc()
                log.info("request %s: timed out; generation aborted", calls[0].request_id)
            raise
        finally:
            state.metrics.in_flight.set(state.admission.active - 1)
            state.metrics.tokens_in_use.set(state.admission.tokens_in_use - cost)
        for outcome in outcomes:
            outcome.queue_s = queued
        return outcomes


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route really gives (``errors.py``'s shape)."""
    what = {
        400: "invalid request: `error.param` names the field",
        401: "missing or invalid API key",
        404: "unknown route or model",
        413: "request body over the server's limit",
        429: "at capacity: retry after `Retry-After` seconds",
        500: "unexpected server error (logged; no trace leaves the server)",
        503: "starting, or failed and going away: retry after `Retry-After` seconds",
        504: "request exceeded the server's timeout",
    }
    return {s: {"model": ErrorResponse, "description": what[s]} for s in statuses}


probes = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=_errors(401, 404, 413, 500))
_RUN_ERRORS = _errors(400, 429, 503, 504)


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
    state.metrics.queue_depth.set(state.admission.waiting)
    state.metrics.tokens_in_use.set(state.admission.tokens_in_use)
    state.metrics.engine_unfinished.set(state.engine.unfinished_requests())
    state.metrics.engine_kv_usage.set(state.engine.stats.kv_cache_usage)
    state.metrics.engine_generated.set(state.engine.stats.generated_tokens)
    # iama's own, then vLLM's (vllm:*): both one text exposition, distinct names
    body = generate_latest(state.metrics.registry) + state.engine.prometheus_exposition()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@v1.get("/models", response_model=ModelList)
async def models(request: Request) -> dict[str, Any]:
    state = server_state(request)
    model = {"id": state.model_name, "object": "model", "created": 0, "owned_by": "iama", "root": state.model_path}
    return {"object": "list", "data": [model]}


@v1.get("/rewards", response_model=RewardsList)
async def rewards(request: Request) -> dict[str, Any]:
    state = server_state(request)
    limits = {"max_budget": state.settings.max_budget, "max_tokens": state.settings.max_tokens}
    return rewards_listing(
        state.rewards, state.card, state.service.default_weights(), limits, state.lifecycle.ready_rewards
    )


@v1.post("/align", response_model=AlignResponse, response_model_exclude_none=True, responses=_RUN_ERRORS)
async def align(body: AlignRequest, request: Request) -> AlignResponse:
    state, t0 = server_state(request), time.perf_counter()
    call = state.service.align_call(body, request.state.request_id)  # every 4xx about the body is here
    (outcome,) = await execute(state, request, [call])
    return align_response(
        outcome, model=state.model_name, return_candidates=body.return_candidates, total_s=time.perf_counter() - t0
    )


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
    """Both OpenAI routes; they differ only in prompt encoding (the service) and object names."""
    state = server_state(request)
    rid = request.state.request_id
    calls = state.service.openai_calls(body, rid)
    chat = isinstance(body, ChatCompletionRequest)
    usage_asked = body.stream_options is not None and body.stream_options.include_usage
    continuous = body.stream_options is not None and body.stream_options.continuous_usage_stats
    if body.stream and calls[0].weights is None and calls[0].budget == 1:
        return await _stream_plain(state, calls[0], chat=chat, include_usage=usage_asked, continuous=continuous)
    c = calls[0]
    if body.stream and c.early_rejection is not None and c.sampling.logprobs is None and c.echo is None:
        return await _stream_searched(state, c, chat=chat, include_usage=usage_asked)
    outcomes = await execute(state, request, calls)
    if body.stream:
        chunks = stream_chunks(
            outcomes[0], chat=chat, model=state.model_name, response_id=rid, created=now(), include_usage=usage_asked
        )
        if continuous:  # every token was generated before the first chunk: the usage is final throughout
            final = usage(outcomes[0]).model_dump()
            chunks = [c if "usage" in c else {**c, "usage": final} for c in chunks]
        return StreamingResponse(_iterate(chunks), media_type="text/event-stream", headers=_SSE_HEADERS)
    return JSONResponse(openai_response(outcomes, chat=chat, model=state.model_name, response_id=rid, created=now()))


_SSE_HEADERS = {"Cache-Control": "no-cache"}


async def _iterate(chunks: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    for event in sse_events(chunks):
        yield event


async def _admitted_stream(state: ServerState, call: AlignmentCall, events: AsyncGenerator[bytes, None]) -> Response:
    """Every stream's admission and error policy. Admission is decided before the response
    starts (a 429 cannot follow a 200) and the slot is held until the stream ends. After the 200
    an error can only be an OpenAI error event: the request timeout, or the engine refusing the
    request (known only once it takes it). A client that goes away cancels the stream
    (Starlette), which aborts the generation in vLLM."""
    slot = AsyncExitStack()
    await slot.enter_async_context(state.admission.slot(state.service.cost([call])))
    state.metrics.in_flight.set(state.admission.active)
    state.metrics.tokens_in_use.set(state.admission.tokens_in_use)

    async def guarded() -> AsyncIterator[bytes]:
        try:
            async with contextlib.aclosing(events), asyncio.timeout(state.settings.request_timeout_s):
                async for event in events:
                    yield event
            yield SSE_DONE
        except TimeoutError:
            state.metrics.cancelled.labels("timeout").inc()
            log.info("request %s: stream stopped at the server's timeout", call.request_id)
            yield sse(ErrorResponse.make("request exceeded the server's timeout", "timeout_error", None, "timeout"))
            yield SSE_DONE
        except InvalidEngineInput as exc:
            message = f"the engine refused the request: {exc}"
            yield sse(ErrorResponse.make(message, "invalid_request_error", exc.param, "invalid_value"))
            yield SSE_DONE
        except APIError as exc:
            code = exc.code or ("invalid_value" if exc.status == 400 else "internal_error")
            yield sse(ErrorResponse.make(exc.message, error_type(exc.status), exc.param, str(code)))
            yield SSE_DONE
        except asyncio.CancelledError:
            state.metrics.cancelled.labels("disconnect").inc()
            log.info("request %s: client went away mid-stream; generation aborted", call.request_id)
            raise
        finally:
            await slot.aclose()
            state.metrics.in_flight.set(state.admission.active)
            state.metrics.tokens_in_use.set(state.admission.tokens_in_use)

    return StreamingResponse(guarded(), media_type="text/event-stream", headers=_SSE_HEADERS)


async def _stream_searched(state: ServerState, call: AlignmentCall, *, chat: bool, include_usage: bool) -> Response:
    """An aligned stream with early rejection: once a checkpoint has left one candidate that can
    be chosen, its tokens stream as vLLM produces them; if several survive to the end, the chosen
    one is sent after selection, as without early rejection."""
    base = chunk_base(chat=chat, model=state.model_name, response_id=call.request_id, created=now())

    async def events() -> AsyncGenerator[bytes, None]:
        pieces: asyncio.Queue[str] = asyncio.Queue()
        task = asyncio.ensure_future(state.service.run(call, sink=pieces.put_nowait))
        try:
            if chat:
                yield sse(stream_chunk(base, chat=True, text="", role=True))
            streamed = False
            while not task.done() or not pieces.empty():
                getter = asyncio.ensure_future(pieces.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                yield sse(stream_chunk(base, chat=chat, text=getter.result()))
                streamed = True
            chunks = stream_chunks(
                task.result(), chat=chat, model=state.model_name, response_id=call.request_id,
                created=base["created"], include_usage=include_usage,
            )  # fmt: skip
            if chat:
                chunks = chunks[1:]  # the role chunk went first
            if streamed:  # the text went already: only the finish (and usage) chunks are left
                chunks = [ch for ch in chunks if "usage" in ch or ch["choices"][0]["finish_reason"] is not None]
            for chunk in chunks:
                yield sse(chunk)
        finally:
            task.cancel()  # a disconnect or timeout stops every candidate in vLLM

    return await _admitted_stream(state, call, events())


async def _stream_plain(
    state: ServerState, call: AlignmentCall, *, chat: bool, include_usage: bool, continuous: bool = False
) -> Response:
    """Plain generation streamed token by token, as vLLM produces it."""
    base = chunk_base(chat=chat, model=state.model_name, response_id=call.request_id, created=now())

    async def events() -> AsyncGenerator[bytes, None]:
        if chat:
            yield sse(stream_chunk(base, chat=True, text="", role=True))
        at = 0  # characters streamed so far: completions' text_offset
        async for delta in state.service.stream(call):
            if call.echo is not None and at == 0:
                prompt = delta.prompt_logprobs
                lps = None if prompt is None else piece_logprobs(prompt, chat=False)
                yield sse(stream_chunk(base, chat=False, text=call.echo, logprobs=lps))
                at = len(call.echo)
            asked = call.sampling.logprobs is not None
            if delta.text or (asked and delta.logprobs):
                lps = piece_logprobs(delta.logprobs, chat=chat, offset=at) if asked else None
                chunk = stream_chunk(base, chat=chat, text=delta.text, logprobs=lps)
                if continuous:  # vLLM's continuous_usage_stats: the usage so far
                    p, n = len(call.prompt_ids), delta.tokens
                    chunk["usage"] = Usage(prompt_tokens=p, completion_tokens=n, total_tokens=p + n).model_dump()
                yield sse(chunk)
                at += len(delta.text)
            if delta.finish_reason is not None:
                yield sse(stream_chunk(base, chat=chat, text=None if chat else "", finish=delta.finish_reason))
                if include_usage:
                    p, n = delta.prompt_tokens, delta.tokens
                    yield sse(usage_chunk(base, Usage(prompt_tokens=p, completion_tokens=n, total_tokens=p + n)))

    return await _admitted_stream(state, call, events())
