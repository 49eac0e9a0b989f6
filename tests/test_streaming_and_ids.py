"""Request ids and token streaming, in-process with the fake engine."""

from __future__ import annotations

import asyncio
import json

import pytest
from exposition import metric
from in_process import raw_post, serve, until

pytestmark = pytest.mark.inprocess

ALIGN = {"prompt": "Hi", "reward_weights": {"sentiment": 1}, "budget": 2, "max_tokens": 8}
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "stream": True}


async def test_a_request_id_is_accepted_or_made_and_travels_everywhere(caplog):
    caplog.set_level("INFO", logger="iama.server")
    async with serve() as s:
        r = await s.client.post("/v1/align", json=ALIGN, headers={"X-Request-Id": "trace-42.a"})
        assert r.headers["x-request-id"] == "trace-42.a" and r.json()["id"] == "trace-42.a"
        assert s.engine.calls[-1][3].startswith("trace-42.a-")  # and inside vLLM
        r = await s.client.post("/v1/chat/completions", json={**CHAT, "stream": False}, headers={"X-Request-Id": "c1"})
        assert r.headers["x-request-id"] == "c1" and r.json()["id"] == "c1"
        r = await s.client.post("/v1/align", json={**ALIGN, "budget": 0}, headers={"X-Request-Id": "bad one!"})
        made = r.headers["x-request-id"]
        assert r.status_code == 400 and made.startswith("req-") and len(made) == 36  # errors carry one too
        assert (await s.client.get("/health")).headers["x-request-id"].startswith("req-")
    logged = caplog.text
    assert "request trace-42.a: POST /v1/align -> 200" in logged and f"request {made}: POST /v1/align -> 400" in logged


async def test_plain_streaming_sends_tokens_before_the_generation_ends():
    async with serve() as s:
        s.engine.hold()  # the fake engine produces its first word, then waits
        call = raw_post(s.app, "/v1/chat/completions", {**CHAT, "stream_options": {"include_usage": True}})

        def first_word_sent() -> bool:
            if b'"content": "I"' in call.body():
                return True
            assert not call.task.done(), call.sent  # the call ended without streaming its first word
            return False

        await until(first_word_sent, "the first word streamed while the generation is held")
        assert call.status() == 200 and b"[DONE]" not in call.body()  # mid-generation
        s.engine.release()
        await call.task
        events = [json.loads(ln[6:]) for ln in call.body().decode().split("\n\n") if ln.startswith("data: {")]
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
        assert text == "I love this wonderful day, it is great."
        assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert events[-2]["choices"][0]["finish_reason"] == "stop" and events[-1]["usage"]["completion_tokens"] == 8
        assert call.body().endswith(b"data: [DONE]\n\n")
        assert s.state.admission.active == 0


async def test_a_client_leaving_a_stream_aborts_its_generation():
    async with serve() as s:
        s.engine.hold()
        call = raw_post(s.app, "/v1/completions", {"prompt": "Hi", "max_tokens": 8, "stream": True})
        await until(lambda: b'"text": "I"' in call.body(), "the first word streamed")
        call.gone.set()
        await asyncio.wait_for(call.task, 60)
        assert len(s.engine.aborted) == 1 and not s.engine.running and s.state.admission.active == 0
        text = (await s.client.get("/metrics")).text
        assert metric(text, 'iama_cancelled_requests_total{reason="disconnect"}') == 1


async def test_a_stream_past_the_timeout_ends_with_an_error_event():
    async with serve(request_timeout_s=0.3) as s:
        s.engine.hold()
        call = raw_post(s.app, "/v1/completions", {"prompt": "Hi", "max_tokens": 8, "stream": True})
        await asyncio.wait_for(call.task, 60)
        body = call.body().decode()
        assert '"code": "timeout"' in body and body.endswith("data: [DONE]\n\n")
        assert len(s.engine.aborted) == 1 and s.state.admission.active == 0


async def test_a_stream_is_refused_with_429_before_it_starts_when_full():
    async with serve(max_concurrent_requests=1, max_queued_requests=0) as s:
        s.engine.hold()
        first = raw_post(s.app, "/v1/completions", {"prompt": "Hi", "max_tokens": 8, "stream": True})
        await until(lambda: bool(s.engine.running), "the first stream generating in the engine")
        r = await s.client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 8, "stream": True})
        assert r.status_code == 429 and r.json()["error"]["code"] == "overloaded"
        s.engine.release()
        await first.task
