"""Hostile and unusual input, in-process with the fake engine: every bad value is a 4xx naming
the field before anything reaches the engine; bodies are capped before parsing; OpenAI fields
this server does not implement are refused by name."""

from __future__ import annotations

import json

import pytest
from exposition import metric
from in_process import serve

from iama.seeds import candidate_base_seed
from iama_server.schemas import MAX_SEED

pytestmark = pytest.mark.inprocess

ALIGN = {"prompt": "Hi", "reward_weights": {"sentiment": 1}, "budget": 2, "max_tokens": 4}
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
COMPLETION = {"prompt": "Hi", "max_tokens": 4}
ENDPOINTS = [("/v1/align", ALIGN), ("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)]


async def post_raw(s, path: str, text: str):
    return await s.client.post(path, content=text.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize(("path", "body"), ENDPOINTS, ids=[p for p, _ in ENDPOINTS])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", 2**80),
        ("seed", MAX_SEED + 1),
        ("seed", -1),
        ("temperature", float("nan")),  # json.dumps writes the NaN / Infinity literals Python's parser accepts
        ("temperature", float("inf")),
        ("top_p", 0),
        ("max_tokens", 2**70),
        ("presence_penalty", 3),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", "x" * 300),
        ("stop", ""),
    ],
)
async def test_every_number_and_list_is_bounded_on_every_endpoint(path, body, field, value):
    async with serve() as s:
        r = await post_raw(s, path, json.dumps({**body, field: value}))
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"].split(".")[0] == field
        assert s.engine.calls == []


async def test_the_largest_seed_is_accepted_and_reaches_the_engine():
    async with serve() as s:
        r = await s.client.post("/v1/align", json={**ALIGN, "seed": MAX_SEED})
        seed = s.engine.calls[0][1].seed
        assert r.status_code == 200 and seed == candidate_base_seed(MAX_SEED)
        assert 0 <= seed and seed + ALIGN["budget"] <= MAX_SEED  # every candidate's seed vLLM can take


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**ALIGN, "reward_weights": {f"r{i}": 1 for i in range(65)}}, "reward_weights"),
        ({**ALIGN, "budget": 10**6}, "budget"),
        ({**ALIGN, "alignment_temperature": 1e300}, "alignment_temperature"),
        ({"messages": [{"role": "user", "content": "x"}] * 257, "reward_weights": {"sentiment": 1}}, "messages"),
        ({**ALIGN, "model": "m" * 300}, "model"),
        ({**ALIGN, "rubrics": {f"r{i}": "x" for i in range(17)}}, "rubrics"),
        ({**ALIGN, "rubrics": {"r": "x" * 4001}}, "rubrics.r"),
        ({**ALIGN, "rubrics": {"r" * 65: "x"}}, "rubrics." + "r" * 65),
        ({**ALIGN, "rubrics": {"r": 3}}, "rubrics.r"),
        ({**ALIGN, "rubrics": ["x"]}, "rubrics"),
    ],
)
async def test_collections_are_capped(body, param):
    async with serve() as s:
        r = await s.client.post("/v1/align", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


async def test_a_body_over_the_limit_is_413_before_parsing_declared_or_streamed():
    async with serve(max_request_bytes=4096) as s:
        big = json.dumps({**ALIGN, "prompt": "x" * 20_000})
        r = await post_raw(s, "/v1/align", big)
        assert r.status_code == 413
        assert r.json()["error"] == {
            "message": "request body is larger than the server's limit of 4096 bytes",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }

        async def chunks():  # no Content-Length: counted as it streams in
            for _ in range(10):
                yield b"x" * 1000

        r = await s.client.post("/v1/align", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert s.engine.calls == []
        assert (await s.client.post("/v1/align", json=ALIGN)).status_code == 200  # under the limit: fine
        text = (await s.client.get("/metrics")).text
        assert metric(text, 'iama_errors_total{type="invalid_request_error"}') == 2


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"echo": True}, "echo"),  # a completions field
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"store": True}, "store"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_openai_fields_this_server_does_not_implement_are_refused_by_name(extra, param):
    async with serve() as s:
        r = await s.client.post("/v1/chat/completions", json={**CHAT, **extra})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param
        assert err["code"] == ("invalid_value" if param == "surprise" else "unsupported_parameter")


async def test_neutral_values_of_unimplemented_fields_are_fine():
    async with serve() as s:
        body = {**CHAT, "response_format": {"type": "text"}, "echo": False, "tools": [], "store": False}
        assert (await s.client.post("/v1/chat/completions", json=body)).status_code == 200


async def test_content_parts_text_is_accepted_and_other_parts_refused():
    async with serve() as s:
        parts = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]
        r = await s.client.post("/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": parts}]})
        assert r.status_code == 200
        assert s.engine.calls[-1][0] == s.engine.encode_chat([{"role": "user", "content": "Hello there"}])
        image = [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
        r = await s.client.post("/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": image}]})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "messages.0.content"
        assert r.json()["error"]["code"] == "unsupported_parameter"


async def test_completions_accept_a_list_of_prompts_with_choices_in_order():
    async with serve() as s:
        body = {"prompt": ["one", "two words", "three more words"], "max_tokens": 4, "n": 2, "seed": 1}
        d = (await s.client.post("/v1/completions", json=body)).json()
        assert [c["index"] for c in d["choices"]] == list(range(6))
        assert [call[0] for call in s.engine.calls] == [s.engine.encode_text(p) for p in body["prompt"]]
        assert d["usage"]["prompt_tokens"] == 1 + 2 + 3
        r = await s.client.post("/v1/completions", json={"prompt": ["x"] * 17})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        r = await s.client.post("/v1/completions", json={"prompt": [1, 2.5, 3]})
        assert r.status_code == 400 and r.json()["error"]["param"].startswith("prompt")


async def test_penalties_reach_the_engine():
    async with serve() as s:
        body = {**CHAT, "presence_penalty": 0.5, "frequency_penalty": -0.25, "ignore_eos": True,
                "stop_token_ids": [7, 9], "include_stop_str_in_output": True}  # fmt: skip
        assert (await s.client.post("/v1/chat/completions", json=body)).status_code == 200
        sampling = s.engine.calls[-1][1]
        assert (sampling.presence_penalty, sampling.frequency_penalty) == (0.5, -0.25)
        assert sampling.ignore_eos  # vLLM's extension, sent by load generators (guidellm)
        assert sampling.stop_token_ids == [7, 9] and sampling.include_stop_str_in_output  # vLLM's too
        r = await s.client.post("/v1/chat/completions", json={**CHAT, "stop_token_ids": [-1]})
        assert r.status_code == 400 and r.json()["error"]["param"].startswith("stop_token_ids")


@pytest.mark.parametrize(
    ("query", "param"),
    [({"until": "0.5"}, "until"), ({"since": "2026-12-01T00:00:00"}, "since"), ({"key": "k" * 65}, "key"),
     ({"group_by": "user"}, "group_by"), ({"since": "x" * 100}, "since")],
)  # fmt: skip
async def test_usage_queries_are_bounded_and_named(query, param):
    async with serve() as s:
        r = await s.client.get("/v1/usage", params=query)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
