"""Ray Serve: ``iama serve``'s app in every replica of one deployment, behind an ingress that
routes each request to the replica holding its prompt's KV cache.

Two deployments, both Ray Serve's (no scheduler, router or launcher of ours):

* ``IAMAReplica``: one engine + rewards + the whole FastAPI app (validation, auth, admission,
  errors, metrics), exactly what ``iama serve`` runs. Replicas come and go with
  ``num_replicas`` or ``autoscaling_config`` (target ongoing requests); ``check_health`` fails
  once the replica's engine died, so Serve replaces it. GPUs per replica (``num_gpus``) are
  vLLM's: tensor parallel inside a replica is vLLM's own ``tensor_parallel_size``.
* ``Ingress``: a thin HTTP front that forwards the request, with its prompt or messages
  attached, through a deployment handle. Ray Serve's ``PrefixCacheAffinityRouter`` reads those
  to send requests sharing a prompt prefix to the same replica (vLLM's prefix cache). A request
  whose replica dies before answering is retried on another (no accepted request is lost);
  a stream already started cannot be, and ends with an error event.

Run it with ``iama serve --ray`` (this machine), ``serve run iama_server.ray_app:build_app
num_replicas=2`` or KubeRay's RayService (``deploy/helm/iama``, ``ray.enabled``).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.config import RequestRouterConfig

from iama_server.errors import APIError, error_body
from iama_server.rendering import sse

log = logging.getLogger("iama.ray")

PREFIX_ROUTER = "ray.serve.llm.request_router.PrefixCacheAffinityRouter"
REPLICA_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)
RETRIES = 2  # another replica, twice, before the client hears of it
HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive", "host"}
SERVE_SET = {"x-request-id"}  # Serve's proxy sets it on the response (the replica echoes the same id)


@dataclass
class Forwarded:
    """One HTTP request on its way to a replica. ``prompt`` is the text Ray Serve's
    prefix-cache-affinity router matches on: the prompt, or the chat messages' text joined, or
    "METHOD /path" for a request with neither (``/health``, a bad body). It is the only routing
    attribute and never empty: the router reads ``messages`` first whenever such an attribute
    exists, divides by the text's length, and an exception there wedges its queue."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    prompt: str = ""
    stream: bool = False


def _message_text(messages: list[Any]) -> str:
    """The chat messages' text, joined as the prefix router joins it (string contents and the
    ``text`` of content parts)."""
    out = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return "".join(out)


def routing_fields(body: bytes) -> tuple[str, bool]:
    """(routing text, stream) of a JSON body, best effort: "" when it has no prompt (the caller
    routes such a request on its path; a body that is not JSON gets its 400 from a replica)."""
    try:
        data = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return "", False
    if not isinstance(data, dict):
        return "", False
    stream = data.get("stream") is True
    messages = data.get("messages")
    if isinstance(messages, list):
        return _message_text(messages), stream
    prompt = data.get("prompt")
    prompts = data.get("prompts")
    if prompt is None and isinstance(prompts, list) and prompts:
        prompt = prompts[0]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompt = prompt[0]  # a batch: route by its first prompt
    return (prompt if isinstance(prompt, str) else ""), stream


class IAMAReplica:
    """The whole ``iama serve`` app around one engine, called through Ray Serve handles."""

    async def __init__(self, settings: dict[str, Any] | None = None, engine: str | None = None) -> None:  # type: ignore[misc]
        import httpx

        from iama_server.app import create_app
        from iama_server.settings import ServerSettings

        made = _import(engine)() if engine else None  # tests: "fake_engine:FakeEngine"
        self.app = create_app(ServerSettings.load(**(settings or {})), made)
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        state = self.app.state.iama
        while not state.lifecycle.ready:  # Serve sends traffic once __init__ returns: after loading
            if state.lifecycle.detail is not None and not state.lifecycle.ready:
                raise RuntimeError(f"replica failed to start: {state.lifecycle.detail}")
            await asyncio.sleep(0.1)
        transport = httpx.ASGITransport(app=self.app)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://replica", timeout=None)

    async def handle(self, req: Forwarded) -> tuple[int, list[tuple[str, str]], bytes]:
        r = await self.client.request(req.method, _url(req), headers=req.headers, content=req.body)
        return r.status_code, [*r.headers.multi_items(), self._served_by()], r.content

    async def stream(self, req: Forwarded) -> AsyncIterator[Any]:
        """The status and headers first, then the body as the app produces it."""
        async with self.client.stream(req.method, _url(req), headers=req.headers, content=req.body) as r:
            yield r.status_code, [*r.headers.multi_items(), self._served_by()]
            async for chunk in r.aiter_raw():
                yield chunk

    async def check_health(self) -> None:
        """Serve calls this periodically: raising makes it replace the replica."""
        life = self.app.state.iama.lifecycle
        if not life.ready:
            raise RuntimeError(life.detail or "the engine is not ready")

    def _served_by(self) -> tuple[str, str]:
        """``X-IAMA-Replica``: which replica answered (operators, and the affinity tests)."""
        return "x-iama-replica", serve.get_replica_context().replica_id.unique_id

    async def __del__(self) -> None:  # Serve's graceful shutdown: drain, stop the engine
        lifespan = getattr(self, "_lifespan", None)
        if lifespan is not None:
            await lifespan.__aexit__(None, None, None)


def _url(req: Forwarded) -> str:
    return req.path + (f"?{req.query}" if req.query else "")


def _import(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


ingress_app = FastAPI(title="IAMA on Ray Serve", docs_url=None, redoc_url=None, openapi_url=None)


class Ingress:
    """Forwards every path, method and header to a replica; streams stay streams."""

    def __init__(self, replicas: Any) -> None:
        self.replicas = replicas

    @ingress_app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
    async def forward(self, request: Request, path: str) -> Response:
        body = await request.body()
        text, stream = routing_fields(body)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_HEADERS]
        req = Forwarded(
            request.method, "/" + path, request.url.query, headers, body, text or f"{request.method} /{path}", stream
        )
        if stream:
            return await self._stream(req)
        for attempt in range(RETRIES + 1):
            try:
                status, out_headers, content = await self.replicas.handle.remote(req)
                break
            except REPLICA_LOST:
                if attempt == RETRIES:
                    return _unavailable()
                log.warning("replica lost before answering; retrying on another (%d)", attempt + 1)
        kept = [(k, v) for k, v in out_headers if k.lower() not in HOP_HEADERS | SERVE_SET]
        response = Response(content=content, status_code=status)
        response.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in kept] + [
            (b"content-length", str(len(content)).encode())
        ]
        return response

    async def _stream(self, req: Forwarded) -> Response:
        for attempt in range(RETRIES + 1):
            gen = self.replicas.options(stream=True).stream.remote(req)
            try:
                status, out_headers = await gen.__anext__()  # nothing sent yet: safe to retry
                break
            except REPLICA_LOST:
                if attempt == RETRIES:
                    return _unavailable()
        kept = {k: v for k, v in out_headers if k.lower() not in HOP_HEADERS | SERVE_SET}

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in gen:
                    yield chunk
            except REPLICA_LOST:
                yield sse(error_body(503, "the replica serving this stream died"))

        return StreamingResponse(body(), status_code=status, headers=kept)


def _unavailable() -> Response:
    return APIError(503, "no replica could serve the request; retry", headers={"Retry-After": "1"}).response()


def build_app(args: dict[str, Any] | None = None) -> Any:
    """The Serve application (``serve run iama_server.ray_app:build_app key=value …``).

    ``args``: ``num_replicas`` (default 1) or ``autoscaling_config`` ({min_replicas,
    max_replicas, target_ongoing_requests}); ``num_gpus`` / ``num_cpus`` per replica;
    ``router`` (``prefix``, the default, or ``pow2``); ``ingress_replicas``; ``settings``: iama
    serve settings (as in its YAML; IAMA_* variables apply too); ``engine``: an import path to an
    engine class replacing vLLM (the tests' fake)."""
    args = dict(args or {})
    settings = args.pop("settings", None) or {}
    engine = args.pop("engine", None)
    router = args.pop("router", "prefix")
    actor: dict[str, Any] = {}
    for key in ("num_gpus", "num_cpus"):
        if key in args:
            actor[key] = float(args.pop(key))
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        "max_ongoing_requests": int(args.pop("max_ongoing_requests", 64)),
        "health_check_period_s": float(args.pop("health_check_period_s", 10)),
        "graceful_shutdown_timeout_s": float(args.pop("graceful_shutdown_timeout_s", 60)),
    }
    if "autoscaling_config" in args:
        options["autoscaling_config"] = args.pop("autoscaling_config")
    else:
        options["num_replicas"] = int(args.pop("num_replicas", 1))
    if router == "prefix":
        options["request_router_config"] = RequestRouterConfig(request_router_class=PREFIX_ROUTER)  # type: ignore[arg-type]
    elif router != "pow2":
        raise ValueError(f"router must be 'prefix' or 'pow2', got {router!r}")
    ingress_replicas = int(args.pop("ingress_replicas", 1))
    if args:
        raise ValueError(f"unknown build_app arguments: {', '.join(sorted(args))}")
    replica = serve.deployment(name="IAMAReplica", **options)(IAMAReplica)
    # the ingress only forwards: it claims no CPU, so replicas can have every core Ray counts
    front = serve.deployment(name="Ingress", num_replicas=ingress_replicas, ray_actor_options={"num_cpus": 0})(
        serve.ingress(ingress_app)(Ingress)
    )
    return front.bind(replica.bind(settings, engine))
