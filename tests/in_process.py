"""The real FastAPI app, in-process, over ``httpx.ASGITransport``, with a fake engine.

The fast tier of the server tests: everything but vLLM is real (routes, validation,
admission, batched scoring with real rewards, selection, rendering, error handlers).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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
                for _ in range(500):
                    if (await client.get("/health")).status_code == 200:
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("the fake engine never became ready")
            yield InProcess(app, engine, client)


def metric(text: str, name: str) -> float:
    """Value of one sample line of a Prometheus exposition, ``name`` with its labels."""
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    raise AssertionError(f"{name} not in metrics")
