"""Start-up and failure in-process: /health is 200 only when the engine is up and every reward
is warm; a reward that cannot load, an engine that cannot start or dies later is fatal."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from fake_engine import FakeEngine
from in_process import REWARDS, raw_post, serve, until

from iama.rewards import register

pytestmark = pytest.mark.inprocess

GATE = threading.Event()


@dataclass
class GatedReward:
    """Its first score waits for GATE, like a model that loads on first use; counts its loads."""

    name: str = "gated"
    description: str = "test reward that loads on first use"
    loads: list[int] = field(default_factory=list)

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def score(self, prompts, completions):
        if not self.loads:
            GATE.wait(60)
            self.loads.append(1)
        return np.ones(len(completions))


@dataclass
class BrokenReward:
    name: str = "broken"
    description: str = "test reward whose model cannot load"

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def score(self, prompts, completions):
        raise OSError("model file reward.bin not found\nsecond line of detail")


register("test_gated", "test reward that loads on first use")(GatedReward)
register("test_broken", "test reward that cannot load")(BrokenReward)

ALIGN = {"prompt": "hi", "reward_weights": {"gated": 1.0}, "budget": 2}


async def test_health_waits_for_reward_warm_up_so_the_first_request_pays_no_load():
    GATE.clear()
    rewards = {**REWARDS, "gated": {"type": "test_gated"}}
    async with serve(wait_ready=False, rewards=rewards) as s:
        # The engine is up and sentiment warm (it warms before gated), gated is still loading: wait
        # for that state, not for the engine alone (on a loaded machine sentiment can still be loading).
        await until(lambda: s.engine.started and "sentiment" in s.state.lifecycle.ready_rewards)
        r = await s.client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "starting"
        listing = {x["name"]: x["ready"] for x in (await s.client.get("/v1/rewards")).json()["data"]}
        assert listing["gated"] is False and listing["sentiment"] is True
        assert (await s.client.post("/v1/align", json=ALIGN)).status_code == 503
        GATE.set()
        await until(lambda: s.state.lifecycle.ready)
        assert (await s.client.get("/health")).status_code == 200
        gated = s.state.rewards.functions["gated"]
        assert gated.loads == [1]  # loaded by the warm-up, before any request
        assert (await s.client.post("/v1/align", json=ALIGN)).status_code == 200
        assert gated.loads == [1]
        metrics = (await s.client.get("/metrics")).text
        assert 'iama_reward_warmup_seconds{reward="gated"}' in metrics


async def test_a_reward_that_cannot_load_fails_start_up_naming_it():
    fatal = []
    rewards = {**REWARDS, "rm": {"type": "test_broken"}}
    async with serve(wait_ready=False, rewards=rewards) as s:
        s.state.lifecycle.on_fatal = lambda: fatal.append(True)
        await until(lambda: s.state.lifecycle.phase == "failed")
        h = await s.client.get("/health")
        assert h.status_code == 503 and h.json()["status"] == "failed"
        detail = h.json()["detail"]
        assert "reward 'rm' (test_broken) failed to load: OSError: model file reward.bin not found" in detail
        assert "\n" not in detail and s.state.lifecycle.exit_code == 1 and fatal == [True]
        r = await s.client.post("/v1/align", json={**ALIGN, "reward_weights": {"sentiment": 1}})
        assert r.status_code == 503 and "failed to load" in r.json()["error"]["message"]


async def test_an_engine_that_cannot_start_fails_start_up():
    engine = FakeEngine(start_error=RuntimeError("CUDA out of memory\n(trace...)"))
    async with serve(engine, wait_ready=False) as s:
        await until(lambda: s.state.lifecycle.phase == "failed")
        assert s.state.lifecycle.detail == "start-up failed: RuntimeError: CUDA out of memory"


async def test_an_engine_that_dies_later_turns_health_503_and_exits():
    fatal = []
    async with serve() as s:
        s.state.lifecycle.on_fatal = lambda: fatal.append(True)
        assert (await s.client.get("/health")).status_code == 200
        s.engine.started = False  # what AsyncLLM.errored reports once its engine core process is gone
        await until(lambda: s.state.lifecycle.phase == "failed")
        h = await s.client.get("/health")
        assert h.status_code == 503 and "engine died" in h.json()["detail"]
        assert fatal == [True] and s.state.lifecycle.exit_code == 1
        assert (await s.client.post("/v1/align", json={**ALIGN, "reward_weights": {"sentiment": 1}})).status_code == 503


async def test_a_real_reward_whose_model_is_missing_fails_start_up(tmp_path):
    rewards = {**REWARDS, "rel": {"type": "relevance", "model": str(tmp_path / "missing-minilm")}}
    async with serve(wait_ready=False, rewards=rewards) as s:
        await until(lambda: s.state.lifecycle.phase == "failed")
        assert "reward 'rel' (relevance) failed to load" in s.state.lifecycle.detail


async def test_a_stream_whose_engine_dies_ends_with_the_503_error_event_not_a_broken_connection():
    """After the 200 the failure can only be an event: the same error body a request gets
    without ``stream`` (service_unavailable, not_ready), then [DONE]; the server is failed."""
    async with serve() as s:
        s.engine.hold()  # the fake engine produces its first word, then waits
        body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 8}
        call = raw_post(s.app, "/v1/chat/completions", body)
        await until(lambda: b'"content": "I"' in call.body(), "the first word streamed")
        s.engine.die()
        await call.task
        events = [ln for ln in call.body().decode().split("\n\n") if ln.startswith("data: ")]
        assert call.status() == 200 and events[-1] == "data: [DONE]"
        error = json.loads(events[-2].removeprefix("data: "))["error"]
        assert (error["type"], error["code"]) == ("service_unavailable", "not_ready")
        assert "engine died" in error["message"]
        assert s.state.lifecycle.phase == "failed" and s.state.admission.active == 0


async def test_a_request_running_when_the_engine_dies_gets_a_503_not_a_500():
    async with serve() as s:
        s.engine.hold()
        pending = asyncio.create_task(s.client.post("/v1/align", json={**ALIGN, "reward_weights": {"sentiment": 1}}))
        await until(lambda: bool(s.engine.running))
        s.engine.die()
        r = await pending
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        assert "engine died" in r.json()["error"]["message"]
        assert s.state.lifecycle.phase == "failed"
