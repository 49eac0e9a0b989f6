"""The FastAPI application: routes, auth, admission, lifespan of the engine and scorer."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from iama.modelcard import ModelCard, load_model_card
from iama.models import DEFAULT_MODEL_ALIAS, DEFAULT_MODEL_NAME, resolve_model
from iama.rewards import DEFAULT_REWARDS, RewardSet, RewardSpec, available_rewards, bind_tokenizer
from iama_server.admission import Admission
from iama_server.engine import Engine
from iama_server.errors import APIError, install_error_handlers
from iama_server.metrics import Metrics
from iama_server.schemas import (
    AlignmentInfo,
    AlignRequest,
    AlignResponse,
    Candidate,
    ChatCompletionRequest,
    CompletionRequest,
    Timings,
    Usage,
    new_id,
    now,
)
from iama_server.scoring import BatchedScorer
from iama_server.service import AlignmentCall, AlignmentService, ClientGone, Outcome, guarded
from iama_server.settings import ServerSettings

log = logging.getLogger("iama.server")


class State:
    """Everything a request needs, per app (no module globals), so several apps can coexist."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.admission = Admission(
            settings.max_concurrent_requests, settings.max_queued_requests, settings.retry_after_s
        )
        self.model_path = resolve_model(settings.model)
        self.card: ModelCard | None = load_model_card(self.model_path) if Path(self.model_path).is_dir() else None
        specs: dict[str, RewardSpec] = dict(self.card.rewards) if self.card else dict(DEFAULT_REWARDS)
        specs.update(settings.rewards)
        self.rewards = RewardSet(bind_tokenizer(specs, self.model_path))
        self.model_name = settings.served_model_name or (
            DEFAULT_MODEL_NAME if settings.model == DEFAULT_MODEL_ALIAS else settings.model
        )
        self.engine = Engine(self.model_path, settings)
        self.scorer = BatchedScorer(
            self.rewards, settings.score_batch_size, settings.score_batch_wait_ms / 1000, self._count_batch
        )
        self.service = AlignmentService(self.engine, self.rewards, self.scorer, settings, self.metrics, self.card)
        self.engine_error: str | None = None

    def _count_batch(self, size: int) -> None:
        self.metrics.score_batches.inc()
        self.metrics.scored.inc(size)


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    state = State(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.scorer.start()

        async def start_engine() -> None:
            try:
                await asyncio.to_thread(state.engine.start)
                log.info("engine ready: %s", state.model_path)
            except Exception as exc:  # surfaced by /health; the process keeps answering
                state.engine_error = f"{type(exc).__name__}: {exc}"
                log.exception("engine failed to start")

        starter = asyncio.create_task(start_engine())
        try:
            yield
        finally:
            starter.cancel()
            await state.scorer.stop()
            await asyncio.to_thread(state.engine.shutdown)

    app = FastAPI(title="IAMA server", version="0.1.0", lifespan=lifespan)
    app.state.iama = state
    install_error_handlers(app)

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        t0 = time.perf_counter()
        response = await call_next(request)
        endpoint = request.scope.get("route").path if request.scope.get("route") else "unmatched"
        state.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        state.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        if response.status_code >= 400:
            state.metrics.errors.labels(str(response.status_code)).inc()
        return response

    keys = [k.get_secret_value() for k in settings.api_keys]

    async def auth(request: Request) -> None:
        if not keys:
            return
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not token or not any(secrets.compare_digest(token, k) for k in keys):
            raise APIError(
                401, "missing or invalid API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
            )

    def require_engine() -> None:
        if not state.engine.ready:
            msg = f"engine failed to start: {state.engine_error}" if state.engine_error else "engine is starting"
            raise APIError(503, msg, code="not_ready", headers={"Retry-After": "5"})

    def check_model(model: str | None) -> None:
        if model is not None and model not in (state.model_name, settings.model):
            raise APIError(
                404, f"model {model!r} is not served here; use {state.model_name!r}", "model", "model_not_found"
            )

    async def execute(request: Request, call: AlignmentCall) -> Outcome:
        async with state.admission.slot() as queued:
            state.metrics.queue_depth.set(state.admission.waiting)
            state.metrics.in_flight.set(state.admission.active)
            try:
                outcome: Outcome = await guarded(state.service.run(call), request.receive, settings.request_timeout_s)
            finally:
                state.metrics.in_flight.set(state.admission.active - 1)
            outcome.queue_s = queued
            return outcome

    # ------------------------------------------------------------------ health & meta
    @app.get("/health")
    async def health() -> JSONResponse:
        if state.engine.ready:
            return JSONResponse({"status": "ok", "model": state.model_name})
        status = "error" if state.engine_error else "starting"
        return JSONResponse({"status": status, "detail": state.engine_error}, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        state.metrics.queue_depth.set(state.admission.waiting)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": state.model_name, "object": "model", "created": 0, "owned_by": "iama", "root": state.model_path}
            ],
        }

    @app.get("/v1/rewards", dependencies=[Depends(auth)])
    async def rewards() -> dict[str, Any]:
        descriptions = available_rewards()
        data = []
        for name, spec in state.rewards.specs.items():
            fn = state.rewards.functions[name]
            data.append(
                {
                    "name": name,
                    "type": spec.type,
                    "description": descriptions.get(spec.type, fn.description),
                    "parameters": fn.params,
                    "normalization": spec.stats.model_dump() if spec.stats else None,
                }
            )
        card = state.card
        return {
            "object": "list",
            "data": data,
            "default_reward_weights": state.service.default_weights(),
            "meta_aligned_for": {
                "tasks": [t.model_dump() for t in card.objective.tasks] if card and card.objective else [],
                "aggregation": card.objective.aggregation.model_dump() if card and card.objective else None,
                "objective_type": card.objective_type if card else None,
                "base_model": card.base_model if card else None,
            },
            "limits": {"max_budget": settings.max_budget, "max_tokens": settings.max_tokens},
        }

    # ------------------------------------------------------------------ /v1/align
    @app.post("/v1/align", dependencies=[Depends(auth)], response_model=AlignResponse, response_model_exclude_none=True)
    async def align(body: AlignRequest, request: Request) -> AlignResponse | Response:
        t0 = time.perf_counter()
        check_model(body.model)
        require_engine()
        svc = state.service
        weights = svc.resolve_weights(body.reward_weights, required=True)
        budget = svc.resolve_budget(body.budget, "budget")
        ids, prompt_text, _ = svc.encode_prompt(body.prompt, body.messages, body.raw_prompt)
        call = svc.make_call(
            ids,
            prompt_text,
            body,
            weights=weights,
            budget=budget,
            algorithm=body.algorithm,
            tau=body.alignment_temperature,
            normalize=body.normalize,
        )
        try:
            out = await execute(request, call)
        except ClientGone:
            return Response(status_code=499)
        i = out.chosen[0]
        cands = out.generation.candidates
        assert out.weighted is not None
        candidates = None
        if body.return_candidates:
            candidates = [
                Candidate(
                    index=j,
                    text=c.text,
                    scores=out.scores_of(j),
                    weighted_score=float(out.weighted[j]),
                    chosen=j == i,
                    finish_reason=c.finish_reason,
                    completion_tokens=c.token_count,
                )
                for j, c in enumerate(cands)
            ]
        return AlignResponse(
            id=new_id("align"),
            created=now(),
            model=state.model_name,
            text=cands[i].text,
            chosen_index=i,
            finish_reason=cands[i].finish_reason,
            algorithm=call.algorithm,
            budget=budget,
            alignment_temperature=call.tau if call.algorithm == "soft_bon" else None,
            reward_weights=weights or {},
            weighted_score=float(out.weighted[i]),
            scores=out.scores_of(i),
            kl_bound=out.kl_bound,
            candidates=candidates,
            usage=_usage(out),
            timings=Timings(
                queue_s=out.queue_s,
                generation_s=out.generation_s,
                scoring_s=out.scoring_s,
                total_s=time.perf_counter() - t0,
            ),
        )

    # ------------------------------------------------------------------ OpenAI-compatible
    def openai_call(body: CompletionRequest | ChatCompletionRequest, ids: list[int], prompt_text: str) -> AlignmentCall:
        svc = state.service
        aligned = body.best_of is not None or body.reward_weights is not None
        budget = (
            svc.resolve_budget(body.best_of if body.best_of is not None else body.n, "best_of") if aligned else body.n
        )
        if budget > settings.max_budget:
            raise APIError(400, f"n must be <= {settings.max_budget}", "n")
        weights = svc.resolve_weights(body.reward_weights, required=budget > body.n) if aligned else None
        return svc.make_call(
            ids,
            prompt_text,
            body,
            weights=weights,
            budget=max(budget, body.n),
            algorithm=body.alignment,
            tau=body.alignment_temperature,
            keep=body.n,
        )

    def alignment_info(out: Outcome, i: int) -> dict[str, Any] | None:
        if out.weighted is None:
            return None
        return AlignmentInfo(
            weighted_score=float(out.weighted[i]),
            scores=out.scores_of(i),
            budget=out.call.budget,
            algorithm=out.call.algorithm,
            kl_bound=out.kl_bound,
        ).model_dump()

    async def openai_endpoint(body: CompletionRequest | ChatCompletionRequest, request: Request) -> Response:
        """Shared by both OpenAI routes; they differ only in prompt encoding and response shape."""
        check_model(body.model)
        require_engine()
        chat = isinstance(body, ChatCompletionRequest)
        if isinstance(body, ChatCompletionRequest):
            ids, text, _ = state.service.encode_prompt(None, body.messages, raw=False)
        else:
            assert isinstance(body.prompt, str)
            ids, text, _ = state.service.encode_prompt(body.prompt, None, raw=True)
        call = openai_call(body, ids, text)
        try:
            out = await execute(request, call)
        except ClientGone:
            return Response(status_code=499)
        rid, created = new_id("chatcmpl" if chat else "cmpl"), now()
        if body.stream:
            c = out.generation.candidates[out.chosen[0]]
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            chunks = _stream_chunks(
                rid,
                created,
                state.model_name,
                c.text,
                c.finish_reason,
                chat=chat,
                usage=_usage(out) if include_usage else None,
            )
            return _sse(chunks)
        choices = []
        for k, i in enumerate(out.chosen):
            c = out.generation.candidates[i]
            content = {"message": {"role": "assistant", "content": c.text}} if chat else {"text": c.text}
            choices.append(
                {
                    "index": k,
                    **content,
                    "finish_reason": c.finish_reason,
                    "logprobs": None,
                    "alignment": alignment_info(out, i),
                }
            )
        return JSONResponse(
            {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": state.model_name,
                "choices": choices,
                "usage": _usage(out).model_dump(),
            }
        )

    @app.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await openai_endpoint(body, request)

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await openai_endpoint(body, request)

    return app


def _usage(out: Outcome) -> Usage:
    p, c = out.generation.prompt_tokens, out.completion_tokens
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


_PIECES = re.compile(r"\s*\S+\s*|\s+")


def _stream_chunks(
    rid: str, created: int, model: str, text: str, finish: str | None, *, chat: bool, usage: Usage | None
) -> list[dict[str, Any]]:
    """OpenAI chunk objects for an already-selected completion, a word at a time."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    base = {"id": rid, "object": obj, "created": created, "model": model}

    def choice(delta: str | None, fin: str | None, role: bool = False) -> dict[str, Any]:
        if chat:
            d: dict[str, Any] = {"role": "assistant"} if role else {}
            if delta is not None:
                d["content"] = delta
            return {"index": 0, "delta": d, "finish_reason": fin, "logprobs": None}
        return {"index": 0, "text": delta or "", "finish_reason": fin, "logprobs": None}

    chunks = []
    if chat:
        chunks.append({**base, "choices": [choice("", None, role=True)]})
    chunks += [{**base, "choices": [choice(piece, None)]} for piece in _PIECES.findall(text)]
    chunks.append({**base, "choices": [choice(None if chat else "", finish or "stop")]})
    if usage is not None:
        chunks.append({**base, "choices": [], "usage": usage.model_dump()})
    return chunks


def _sse(chunks: list[dict[str, Any]]) -> StreamingResponse:
    import json

    async def gen() -> AsyncIterator[bytes]:
        for ch in chunks:
            yield f"data: {json.dumps(ch)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
