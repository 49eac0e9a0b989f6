"""The real FastAPI app, in-process, over ``httpx.ASGITransport``, with a fake engine.

The fast tier of the server tests: everything but vLLM is real (routes, validation,
admission, batched scoring with real rewards, selection, rendering, error handlers).
"""

from __future__ import annotations

import asyncio
import inspect
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fake_engine import FakeEngine
from fastapi import FastAPI

from iama_server.app import create_app
from iama_server.settings import ServerSettings

API_KEY = "fast-key"
REWARDS = {
    "sentiment": {"type": "sentiment"},
    "negative_sentiment": {"type": "negative_sentiment"},
    "short": {"type": "length", "target": 3, "max_length": 20, "unit": "words"},
    "conciseness": {"type": "conciseness", "scale": 5},
}


@dataclass
class InProcess:
    app: FastAPI
    engine: FakeEngine
    client: httpx.AsyncClient

    @property
    def state(self) -> Any:
        return self.app.state.iama


def settings(**overrides: Any) -> ServerSettings:
    base: dict[str, Any] = {
        "model": "fake-model",
        "served_model_name": "fake",
        "default_rewards": False,
        "rewards": REWARDS,
        "max_budget": 8,
        "max_tokens": 64,
        "default_max_tokens": 16,
        "max_prompt_tokens": 50,
        "max_concurrent_requests": 2,
        "max_queued_requests": 2,
        "api_keys": [API_KEY],
        "usage_db": f"sqlite:///{tempfile.mkdtemp(prefix='iama-usage-')}/usage.sqlite3",
    }
    return ServerSettings.model_validate({**base, **overrides})


@asynccontextmanager
async def serve(
    engine: FakeEngine | None = None, wait_ready: bool = True, **overrides: Any
) -> AsyncIterator[InProcess]:
    engine = engine or FakeEngine()
    app = create_app(settings(**overrides), engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://iama", headers=headers) as client:
            if wait_ready:
                await until(lambda: healthy(client), "GET /health to answer 200 (the app ready)")
            yield InProcess(app, engine, client)


async def healthy(client: httpx.AsyncClient) -> bool:
    return (await client.get("/health")).status_code == 200


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], what: str | None = None, ceiling_s: float = 60.0
) -> None:
    """Yield to the app until ``predicate`` (sync or async) holds.

    The only wait the tests use: a bare ``while not …: await asyncio.sleep`` hangs where this
    fails. The ceiling only catches a hang (a minute: the predicate is about the app's own
    progress, which a loaded two-core machine slows but never stops); the failure names what was
    awaited (``what``, or the predicate's source line).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ceiling_s
    while True:
        held = predicate()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if loop.time() > deadline:
            raise AssertionError(f"not reached within {ceiling_s:g} s: {what or _source(predicate)}")
        await asyncio.sleep(0.005)


def _source(predicate: Callable[..., object]) -> str:
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)


@dataclass
class RawCall:
    """One request driven at the ASGI level: what the app sent so far, and a disconnect switch.

    httpx's ASGI transport returns a response only once the app has finished; streaming and
    disconnects need to be watched while it runs.
    """

    sent: list[dict[str, Any]]
    gone: asyncio.Event
    task: asyncio.Task[None]

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    def status(self) -> int | None:
        return next((m["status"] for m in self.sent if m["type"] == "http.response.start"), None)


def raw_post(app: FastAPI, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> RawCall:
    import json

    gone = asyncio.Event()
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    all_headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}", **(headers or {})}
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in all_headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("iama", 80),
        "state": {},
        "app": app,
    }
    return RawCall(sent, gone, asyncio.create_task(app(scope, receive, send)))
