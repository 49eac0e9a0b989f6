"""Admission by cost (``admission.py``): a request holds prompt tokens + N × max_tokens per
prompt of the token capacity. Over the whole capacity: 400 naming the field; not fitting now:
it waits its turn (first come first served), or 429 when the queue is full. Everything here is
by construction (the fake engine holds generations), never by timing."""

from __future__ import annotations

import asyncio

import pytest
from exposition import metric
from in_process import serve, until

pytestmark = pytest.mark.inprocess

# "Hi" is one token for the fake engine's tokenizer, wrapped in the chat template: 3 tokens
BODY = {"prompt": "Hi", "reward_weights": {"sentiment": 1}, "budget": 4, "max_tokens": 10, "raw_prompt": True}
COST = 1 + 4 * 10  # one prompt token + 4 candidates × 10 tokens


async def test_a_request_over_the_whole_capacity_is_a_400_naming_the_field():
    async with serve(token_capacity=COST) as s:
        r = await s.client.post("/v1/align", json={**BODY, "budget": 5})
        assert r.status_code == 400 and r.json()["error"]["param"] == "budget"
        assert "capacity" in r.json()["error"]["message"]
        r = await s.client.post("/v1/completions", json={"prompt": ["Hi", "Hi"], "max_tokens": 10, "n": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n"  # 2 prompts × (1 + 2 × 10) > 41
        chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10, "best_of": 8}
        r = await s.client.post("/v1/chat/completions", json={**chat, "reward_weights": {"sentiment": 1}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "best_of"
        assert s.engine.calls == []  # nothing reached the engine
        assert (await s.client.post("/v1/align", json=BODY)).status_code == 200  # exactly the capacity fits


async def test_a_request_that_does_not_fit_now_waits_its_turn_or_gets_429():
    async with serve(token_capacity=COST + 5, max_concurrent_requests=8, max_queued_requests=1) as s:
        s.engine.hold()
        first = asyncio.create_task(s.client.post("/v1/align", json=BODY))
        await until(lambda: len(s.engine.running) == 1)
        text = (await s.client.get("/metrics")).text
        assert metric(text, "iama_token_capacity_in_use") == COST
        assert metric(text, "iama_token_capacity") == COST + 5
        # a second one costs COST too: it does not fit beside the first, so it waits in the queue
        second = asyncio.create_task(s.client.post("/v1/align", json=BODY))
        await until(lambda: s.state.admission.waiting == 1)
        assert len(s.engine.running) == 1  # not started: the count limit (8) is not what stops it
        # the queue (1) is full: a third is refused at once, with Retry-After
        third = await s.client.post("/v1/align", json=BODY)
        assert third.status_code == 429 and int(third.headers["retry-after"]) >= 1
        assert "tokens in use" in third.json()["error"]["message"]
        s.engine.release()
        assert [r.status_code for r in await asyncio.gather(first, second)] == [200, 200]
        text = (await s.client.get("/metrics")).text
        assert metric(text, "iama_token_capacity_in_use") == 0


async def test_small_requests_run_side_by_side_and_a_large_one_is_not_overtaken():
    small = {**BODY, "budget": 1}  # 1 + 10 tokens
    async with serve(token_capacity=COST, max_concurrent_requests=8, max_queued_requests=8) as s:
        s.engine.hold()
        a = asyncio.create_task(s.client.post("/v1/align", json=small))
        b = asyncio.create_task(s.client.post("/v1/align", json=small))
        await until(lambda: len(s.engine.running) == 2)  # 22 of 41 tokens: both run
        big = asyncio.create_task(s.client.post("/v1/align", json=BODY))  # 41: waits for all of it
        await until(lambda: s.state.admission.waiting == 1)
        c = asyncio.create_task(s.client.post("/v1/align", json=small))  # would fit now, but comes later
        await until(lambda: s.state.admission.waiting == 2)
        assert len(s.engine.running) == 2
        s.engine.release()
        results = await asyncio.gather(a, b, big, c)
        assert [r.status_code for r in results] == [200] * 4
        budgets = [call[2] for call in s.engine.calls]
        assert budgets == [1, 1, 4, 1]  # the large request ran before the small one behind it


async def test_a_request_that_leaves_the_queue_gives_up_its_turn():
    async with serve(token_capacity=COST, max_concurrent_requests=8, max_queued_requests=4) as s:
        s.engine.hold()
        first = asyncio.create_task(s.client.post("/v1/align", json=BODY))
        await until(lambda: len(s.engine.running) == 1)
        gone = asyncio.create_task(s.client.post("/v1/align", json=BODY))
        await until(lambda: s.state.admission.waiting == 1)
        gone.cancel()  # the client goes away while queued
        await until(lambda: s.state.admission.waiting == 0)
        later = asyncio.create_task(s.client.post("/v1/align", json={**BODY, "budget": 1}))
        await until(lambda: s.state.admission.waiting == 1)
        s.engine.release()
        assert [r.status_code for r in await asyncio.gather(first, later)] == [200, 200]
        assert s.state.admission.tokens_in_use == 0 and s.state.admission.active == 0


async def test_a_stream_holds_its_cost_until_it_ends():
    async with serve(token_capacity=COST) as s:
        s.engine.hold()
        chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10, "stream": True}
        stream = asyncio.create_task(s.client.post("/v1/chat/completions", json=chat))
        await until(lambda: len(s.engine.running) == 1)
        assert s.state.admission.tokens_in_use == len(s.engine.calls[0][0]) + 10
        s.engine.release()
        assert (await stream).status_code == 200
        assert s.state.admission.tokens_in_use == 0
