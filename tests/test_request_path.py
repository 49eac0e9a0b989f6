"""The server's request path in-process with a fake engine: routes, validation, admission,
timeouts, disconnects, scoring and selection, rendering. Fast and independent of machine speed:
waits that matter are built in (``FakeEngine.hold``), never raced."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from exposition import metric
from fake_engine import CANDIDATES, FakeEngine
from in_process import API_KEY, REWARDS, healthy, raw_post, serve, until

from iama.rewards import RewardSet, weighted_score
from iama.seeds import candidate_base_seed
from iama_server.errors import ErrorCode
from iama_server.schemas import AlignRequest

pytestmark = pytest.mark.inprocess

ALIGN = {"prompt": "How was your day?", "reward_weights": {"sentiment": 1.0}, "budget": 4, "max_tokens": 32}


async def test_health_is_503_until_the_engine_is_up_then_ok():
    engine = FakeEngine()
    engine_start = engine.start
    gate = asyncio.Event()

    def slow_start() -> None:  # runs in a worker thread: wait for the test to let it finish
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()
        engine_start()

    engine.start = slow_start  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    async with serve(engine, wait_ready=False) as s:
        r = await s.client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "starting"
        r = await s.client.post("/v1/align", json=ALIGN)
        assert r.status_code == 503 and r.json()["error"]["code"] == ErrorCode.NOT_READY
        assert r.headers["retry-after"] == "5"
        gate.set()
        await until(lambda: healthy(s.client), "GET /health to answer 200 once the engine is up")
        assert (await s.client.get("/health")).json() == {"status": "ok", "model": "fake"}


async def test_bon_returns_the_argmax_of_the_weighted_normalised_score():
    async with serve() as s:
        weights = {"sentiment": 1.0, "conciseness": 0.5}
        r = await s.client.post(
            "/v1/align", json={**ALIGN, "reward_weights": weights, "budget": 6, "return_candidates": True}
        )
        assert r.status_code == 200, r.text
        d = r.json()
    texts = CANDIDATES[:6]
    rs = RewardSet(REWARDS)
    expect = weighted_score(rs.score(["How was your day?"] * 6, texts), weights)
    assert [c["text"] for c in d["candidates"]] == texts
    assert [c["weighted_score"] for c in d["candidates"]] == pytest.approx(expect.tolist())
    assert d["chosen_index"] == int(np.argmax(expect)) and d["text"] == texts[d["chosen_index"]]
    assert [c["chosen"] for c in d["candidates"]].count(True) == 1
    assert d["kl_bound"] == pytest.approx(math.log(6) - 5 / 6)
    assert d["usage"]["completion_tokens"] == sum(len(t.split()) for t in texts)
    assert d["reward_weights"] == weights and d["budget"] == 6 and d["algorithm"] == "bon"
    assert "alignment_temperature" not in d  # only soft BoN has one


async def test_the_engine_gets_one_request_with_n_equal_to_the_budget_and_the_sampling_asked_for():
    async with serve() as s:
        body = {**ALIGN, "budget": 5, "temperature": 0.7, "top_p": 0.9, "seed": 3, "stop": "\n"}
        assert (await s.client.post("/v1/align", json=body)).status_code == 200
        ((ids, sampling, n, _),) = s.engine.calls
    assert n == 5 and ids == s.engine.encode_chat([{"role": "user", "content": ALIGN["prompt"]}])
    # the seed vLLM gets is the request's hashed base (independent candidates: test_seeds.py)
    assert (sampling.temperature, sampling.top_p, sampling.seed, sampling.stop) == (
        0.7,
        0.9,
        candidate_base_seed(3),
        ["\n"],
    )
    assert sampling.max_tokens == 32


async def test_soft_bon_is_seeded_and_reports_its_temperature():
    async with serve() as s:
        body = {**ALIGN, "algorithm": "soft_bon", "alignment_temperature": 0.5, "seed": 11, "budget": 8}
        first = (await s.client.post("/v1/align", json=body)).json()
        again = (await s.client.post("/v1/align", json=body)).json()
    assert first["algorithm"] == "soft_bon" and first["alignment_temperature"] == 0.5
    assert first["kl_bound"] == pytest.approx(math.log(8))
    assert first["chosen_index"] == again["chosen_index"]


async def test_rewards_see_the_last_user_turn_of_a_conversation():
    async with serve() as s:
        msgs = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "the real question"},
        ]
        call = s.state.calls.align(AlignRequest(messages=msgs, reward_weights={"sentiment": 1.0}), "rid")
    from iama.rewards import reward_prompt

    assert call.prompt == msgs and reward_prompt(call.prompt) == "the real question"


BAD = [
    ({"prompt": "x", "reward_weights": {"nope": 1}}, "reward_weights.nope"),
    ({"prompt": "x", "reward_weights": {"sentiment": -1}}, "reward_weights.sentiment"),
    ({"prompt": "x", "reward_weights": {"sentiment": "NaN"}}, "reward_weights.sentiment"),
    ({"prompt": "x", "reward_weights": {"sentiment": 0, "short": 0}}, "reward_weights"),
    ({"prompt": "x", "reward_weights": {}}, "reward_weights"),
    ({"prompt": "x"}, "reward_weights"),
    ({"prompt": "x", "reward_weights": {"sentiment": 1}, "budget": 0}, "budget"),
    ({"prompt": "x", "reward_weights": {"sentiment": 1}, "budget": 9}, "budget"),
    ({"prompt": "x", "reward_weights": {"sentiment": 1}, "budget": "four"}, "budget"),
    ({"prompt": "x", "reward_weights": {"sentiment": 1}, "max_tokens": 100000}, "max_tokens"),
    ({"prompt": "x", "reward_weights": {"sentiment": 1}, "temperature": -1}, "temperature"),
    ({"prompt": "x", "reward_weights": {"sentiment": 1}, "algorithm": "beam"}, "algorithm"),
    ({"prompt": "x", "reward_weights": {"sentiment": 1}, "alignment_temperature": 0}, "alignment_temperature"),
    ({"reward_weights": {"sentiment": 1}}, "messages"),
    ({"prompt": "x", "messages": [], "reward_weights": {"sentiment": 1}}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}], "reward_weights": {"sentiment": 1}}, "messages.0.role"),
    ({"prompt": "word " * 60, "reward_weights": {"sentiment": 1}}, "prompt"),
    ({"prompt": "", "reward_weights": {"sentiment": 1}}, "prompt"),
    ({"prompt": "x", "reward_weights": {"sentiment": 1}, "surprise": 1}, "surprise"),
    ({"prompt": "x", "reward_weights": {"sentiment": 1}, "model": "gpt-5"}, "model"),
    # JSON types are not coerced: true is not seed 1, "16" is not 16 tokens.
    ({"prompt": "x", "reward_weights": {"sentiment": 1}, "seed": True}, "seed"),
    ({"prompt": "x", "reward_weights": {"sentiment": 1}, "max_tokens": "16"}, "max_tokens"),
    ({"prompt": "x", "reward_weights": {"sentiment": 1}, "temperature": True}, "temperature"),
    ({"prompt": "x", "reward_weights": {"sentiment": 1}, "return_candidates": "yes"}, "return_candidates"),
]


@pytest.mark.parametrize(("body", "param"), BAD, ids=[p for _, p in BAD])
async def test_bad_inputs_are_4xx_naming_the_field(body, param):
    async with serve() as s:
        r = await s.client.post("/v1/align", json=body)
        assert 400 <= r.status_code < 500, r.text
        err = r.json()["error"]
        assert err["param"] == param, err
        assert err["message"] and "Traceback" not in r.text
        assert err["code"] in {c.value for c in ErrorCode}
        assert s.engine.calls == []  # nothing bad reaches the engine


async def test_malformed_bodies_and_unknown_routes():
    async with serve() as s:
        r = await s.client.post("/v1/align", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        r = await s.client.post("/v1/align", content=b"[1, 2]", headers={"content-type": "application/json"})
        assert r.status_code == 400
        r = await s.client.get("/v1/nothing")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await s.client.get("/v1/align")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_messages_need_a_chat_template():
    async with serve(FakeEngine(chat_template=False)) as s:
        r = await s.client.post(
            "/v1/align",
            json={"messages": [{"role": "user", "content": "hi"}], **{k: v for k, v in ALIGN.items() if k != "prompt"}},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        assert (await s.client.post("/v1/align", json=ALIGN)).status_code == 200  # prompt: sent raw


async def test_api_keys_guard_v1_but_not_the_probes():
    async with serve() as s:
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
            r = await s.client.post("/v1/align", json=ALIGN, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            assert r.headers["www-authenticate"] == "Bearer"
        assert (await s.client.get("/health", headers={"Authorization": ""})).status_code == 200
        assert (await s.client.get("/metrics", headers={"Authorization": ""})).status_code == 200


async def test_overload_is_refused_at_once_with_429_and_admitted_requests_all_finish():
    async with serve(max_concurrent_requests=2, max_queued_requests=3, retry_after_s=7) as s:
        s.engine.hold()
        tasks = [asyncio.create_task(s.client.post("/v1/align", json=ALIGN)) for _ in range(5)]
        await until(lambda: s.state.admission.active + s.state.admission.waiting == 5, "all five admitted")
        refused = [await s.client.post("/v1/align", json=ALIGN) for _ in range(3)]
        assert [r.status_code for r in refused] == [429] * 3
        assert refused[0].headers["retry-after"] == "7"
        assert refused[0].json()["error"] == {
            "message": refused[0].json()["error"]["message"],
            "type": "rate_limit_error",
            "param": None,
            "code": "overloaded",
        }
        s.engine.release()
        done = await asyncio.gather(*tasks)
        assert [r.status_code for r in done] == [200] * 5  # an admitted request is never dropped
        text = (await s.client.get("/metrics")).text
        assert metric(text, "iama_in_flight") == 0 and metric(text, "iama_queue_depth") == 0
        assert metric(text, 'iama_errors_total{type="rate_limit_error"}') == 3


async def test_a_request_past_the_timeout_is_a_504_and_its_generation_is_aborted():
    async with serve(request_timeout_s=0.2) as s:
        s.engine.hold()  # the generation can never finish: the timeout must fire
        r = await s.client.post("/v1/align", json=ALIGN)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert len(s.engine.aborted) == 1 and not s.engine.running
        assert s.state.admission.active == 0
        text = (await s.client.get("/metrics")).text
        assert metric(text, 'iama_cancelled_requests_total{reason="timeout"}') == 1
        assert metric(text, "iama_engine_unfinished_requests") == 0
        s.engine.release()
        assert (await s.client.post("/v1/align", json=ALIGN)).status_code == 200


async def test_a_client_that_disconnects_has_its_generation_aborted():
    async with serve() as s:
        s.engine.hold()
        call = raw_post(s.app, "/v1/align", ALIGN)
        await until(lambda: bool(s.engine.running), "the request generating in the engine")
        call.gone.set()
        await call.task
        assert call.status() == 499
        assert len(s.engine.aborted) == 1 and s.state.admission.active == 0
        text = (await s.client.get("/metrics")).text
        assert metric(text, 'iama_cancelled_requests_total{reason="disconnect"}') == 1


async def test_openai_client_chat_completions_stream_and_errors():
    import openai

    async with serve() as s:
        client = openai.AsyncOpenAI(base_url="http://iama/v1", api_key=API_KEY, http_client=s.client)
        assert (await client.models.list()).data[0].id == "fake"
        r = await client.chat.completions.create(
            model="fake",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=10,
            extra_body={"reward_weights": {"sentiment": 1, "short": 1}, "best_of": 4},
        )
        assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
        info = r.choices[0].model_extra["alignment"]
        assert info["budget"] == 4 and set(info["scores"]) == {"sentiment", "short"}
        assert r.usage.completion_tokens == sum(min(len(c.split()), 10) for c in CANDIDATES[:4])

        plain = await client.completions.create(model="fake", prompt="The quick brown", max_tokens=6)
        assert plain.object == "text_completion" and plain.choices[0].model_extra["alignment"] is None
        assert s.engine.calls[-1][2] == 1

        top2 = await client.completions.create(
            model="fake", prompt="hello", max_tokens=6, n=2, extra_body={"best_of": 6, "reward_weights": {"short": 1}}
        )
        scores = [c.model_extra["alignment"]["weighted_score"] for c in top2.choices]
        assert len(scores) == 2 and scores[0] >= scores[1]

        stream = await client.chat.completions.create(
            model="fake",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=10,
            seed=2,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"reward_weights": {"sentiment": 1}, "best_of": 2, "alignment": "soft_bon"},
        )
        chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        same = await client.chat.completions.create(
            model="fake",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=10,
            seed=2,
            extra_body={"reward_weights": {"sentiment": 1}, "best_of": 2, "alignment": "soft_bon"},
        )
        assert same.choices[0].message.content == text

        with pytest.raises(openai.BadRequestError) as err:
            await client.chat.completions.create(
                model="fake",
                messages=[{"role": "user", "content": "x"}],
                extra_body={"reward_weights": {"zzz": 1}, "best_of": 2},
            )
        assert err.value.body["param"] == "reward_weights.zzz"
        with pytest.raises(openai.NotFoundError):
            await client.completions.create(model="not-this-one", prompt="x", max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            bad = openai.AsyncOpenAI(base_url="http://iama/v1", api_key="bad", http_client=s.client)
            await bad.models.list()


async def test_sse_wire_format():
    async with serve() as s:
        body = {"prompt": "hi", "max_tokens": 5, "stream": True}
        async with s.client.stream("POST", "/v1/completions", json=body) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = [ln async for ln in r.aiter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"


async def test_rewards_listing_and_metrics():
    async with serve() as s:
        rw = (await s.client.get("/v1/rewards")).json()
        by_name = {r["name"]: r for r in rw["data"]}
        assert set(by_name) == set(REWARDS)
        assert by_name["short"]["parameters"]["target"] == 3 and by_name["sentiment"]["description"]
        assert rw["meta_aligned_for"]["tasks"] == [] and rw["limits"] == {"max_budget": 8, "max_tokens": 64}
        await s.client.post("/v1/align", json={**ALIGN, "budget": 0})
        await s.client.post("/v1/align", json=ALIGN)
        text = (await s.client.get("/metrics")).text
    assert metric(text, 'iama_errors_total{type="invalid_request_error"}') == 1
    assert metric(text, 'iama_requests_total{endpoint="/v1/align",status="200"}') == 1
    assert metric(text, 'iama_tokens_total{kind="completion"}') > 0
    assert metric(text, "iama_score_batches_total") == 1


# Batching by construction, not by racing a window: the scorer's batch loop keeps a batch open
# until it holds ``score_batch_size`` completions (here exactly what the requests bring, four
# each) or its window ends (two minutes: only a hang gets there), so the requests are scored
# together however slowly they reach it. Without batching they are scored one batch each.
SHARED_WINDOW_MS = 120_000


async def test_concurrent_requests_share_scoring_batches():
    async with serve(
        max_concurrent_requests=8, max_queued_requests=0, score_batch_size=32, score_batch_wait_ms=SHARED_WINDOW_MS
    ) as s:
        rs = await asyncio.gather(*(s.client.post("/v1/align", json=ALIGN) for _ in range(8)))
        text = (await s.client.get("/metrics")).text
    assert [r.status_code for r in rs] == [200] * 8
    assert metric(text, "iama_scored_completions_total") == 32
    assert metric(text, "iama_score_batches_total") < 8


async def test_a_batch_scores_each_reward_only_on_the_requests_that_asked_for_it():
    async with serve(
        max_concurrent_requests=8, max_queued_requests=0, score_batch_size=8, score_batch_wait_ms=SHARED_WINDOW_MS
    ) as s:
        rewards = s.state.scorer.rewards
        calls: list[tuple[tuple[str, ...], int]] = []
        real = rewards.score

        def recording(prompts, completions, names=None, **kw):
            calls.append((tuple(names), len(completions)))
            return real(prompts, completions, names, **kw)

        rewards.score = recording
        bodies = [{**ALIGN, "reward_weights": {"sentiment": 1}}, {**ALIGN, "reward_weights": {"short": 1}}]
        rs = await asyncio.gather(*(s.client.post("/v1/align", json=b) for b in bodies))  # one batch of 8
        assert [r.status_code for r in rs] == [200, 200]
        text = (await s.client.get("/metrics")).text
    assert metric(text, "iama_score_batches_total") == 1
    assert sorted(calls) == [(("sentiment",), 4), (("short",), 4)]  # not 8 each


async def test_rule_rewards_score_in_worker_processes_with_the_same_result():
    """``score_processes``: the rule rewards run in spawned workers (off this process's GIL)."""
    import os

    async with serve(score_processes=1) as s:
        scorer = s.state.scorer
        assert scorer.in_processes == set(REWARDS)  # all four are rule rewards
        body = {**ALIGN, "reward_weights": {"sentiment": 1.0, "short": 1.0}, "return_candidates": True}
        d = (await s.client.post("/v1/align", json=body)).json()
        pids = {p.pid for p in scorer._procs._processes.values()}
    assert pids and os.getpid() not in pids
    texts = [c["text"] for c in d["candidates"]]
    local = RewardSet(REWARDS).score([ALIGN["prompt"]] * len(texts), texts, ["sentiment", "short"])
    for name in ("sentiment", "short"):
        assert [c["scores"][name]["raw"] for c in d["candidates"]] == pytest.approx(local[name].tolist())


async def test_metrics_serve_the_engines_own_beside_iamas_as_one_exposition():
    from prometheus_client.parser import text_string_to_metric_families

    async with serve() as s:
        s.engine.hold()  # generation waits: the request is in the engine while /metrics is read
        body = {"prompt": "hi", "reward_weights": {"sentiment": 1}, "budget": 3, "max_tokens": 4}
        pending = asyncio.create_task(s.client.post("/v1/align", json=body))

        async def one_running() -> bool:
            text = (await s.client.get("/metrics")).text
            return metric(text, 'vllm:num_requests_running{model_name="fake"}') == 1  # one request, n = 3

        await until(one_running, "the engine's gauge to show the one request running")
        text = (await s.client.get("/metrics")).text
        s.engine.release()
        await pending
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "iama_in_flight" in families and families["vllm:num_requests_running"].samples[0].value == 1


# ---------------------------------------------------------------------- the request's own rules
# Under a JSON constraint the fake wraps each candidate as {"answer": ...}, one word a token: with
# max_tokens 4 the long (and most positive) candidates are cut mid-object and do not parse, while
# "Fine.", "Ok." and "Awful, broken, horrible." finish as valid JSON.
JSON_ALIGN = {**ALIGN, "budget": 8, "max_tokens": 4, "response_format": {"type": "json_object"},
              "return_candidates": True, "seed": 0}  # fmt: skip


def _parses(text: str) -> bool:
    import json

    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


async def test_an_answer_that_does_not_parse_is_never_chosen_over_one_that_does():
    async with serve() as s:
        d = (await s.client.post("/v1/align", json=JSON_ALIGN)).json()
        valid = [c for c in d["candidates"] if _parses(c["text"])]
        best = max(d["candidates"], key=lambda c: c["weighted_score"])
        assert not _parses(best["text"])  # ranked by reward alone, a cut object would have won
        assert _parses(d["text"]) and d["weighted_score"] == max(c["weighted_score"] for c in valid)
        assert d["eligible"] == len(valid) == 3 and d["finish_reason"] == "stop"
        # a schema the short answers break leaves "Awful, broken, horrible." alone
        schema = {
            "type": "object",
            "properties": {"answer": {"type": "string", "minLength": 6}},
            "required": ["answer"],
        }
        fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
        d = (await s.client.post("/v1/align", json={**JSON_ALIGN, "response_format": fmt})).json()
        assert d["eligible"] == 1 and d["text"] == '{"answer": "Awful, broken, horrible."}'
        # none eligible: the best-scoring candidate anyway, and the response says so
        d = (await s.client.post("/v1/align", json={**JSON_ALIGN, "max_tokens": 1})).json()
        assert d["eligible"] == 0 and d["weighted_score"] == max(c["weighted_score"] for c in d["candidates"])
        # the OpenAI routes follow the same rule and report it on the choice
        chat = {"messages": [{"role": "user", "content": "Hi"}], "best_of": 8, "max_tokens": 4, "seed": 0,
                "reward_weights": {"sentiment": 1.0}, "response_format": {"type": "json_object"}}  # fmt: skip
        choice = (await s.client.post("/v1/chat/completions", json=chat)).json()["choices"][0]
        assert _parses(choice["message"]["content"]) and choice["alignment"]["eligible"] == 3


async def test_prefer_finished_ranks_answers_cut_at_max_tokens_last_and_is_off_by_default():
    body = {**ALIGN, "budget": 8, "max_tokens": 3, "seed": 0, "return_candidates": True}
    async with serve() as s:
        plain = (await s.client.post("/v1/align", json=body)).json()
        assert "eligible" not in plain or plain["eligible"] is None  # no rule: rewards alone
        assert plain["finish_reason"] == "length"  # the cut "I love this" outscores the finished ones
        d = (await s.client.post("/v1/align", json={**body, "prefer_finished": True})).json()
        finished = [c for c in d["candidates"] if c["finish_reason"] == "stop"]
        assert d["finish_reason"] == "stop" and d["eligible"] == len(finished) > 0
        assert d["weighted_score"] == max(c["weighted_score"] for c in finished)
        # with response_format the default is on; asking for it off keeps the validity rule only
        off = (await s.client.post("/v1/align", json={**JSON_ALIGN, "prefer_finished": False})).json()
        assert _parses(off["text"]) and off["eligible"] == 3  # a cut JSON object does not parse anyway


async def test_an_adaptive_budget_is_not_ended_by_a_candidate_the_rules_would_not_choose():
    body = {**JSON_ALIGN, "budget": "auto", "max_budget": 8, "target_score": -1e6}
    del body["return_candidates"]
    async with serve() as s:
        d = (await s.client.post("/v1/align", json={**body, "return_candidates": True})).json()
        first_valid = next(i for i, c in enumerate(d["candidates"]) if _parses(c["text"]))
        # every candidate reaches the target; the search stops at the first wave holding a valid one
        assert d["budget_spent"] == next(w for w in (2, 4, 8) if w > first_valid)
        assert _parses(d["text"]) and d["eligible"] >= 1


# ---------------------------------------------------------------------- majority vote
VOTERS = ["The answer is 4.", "I think 5 is great.", "It is 4, sadly.", "Maybe 7, I love it!", "No idea at all."]


async def test_a_vote_returns_the_best_candidate_of_the_most_frequent_answer():
    body = {**ALIGN, "budget": 5, "algorithm": "vote", "vote": {"regex": r"\d+"}, "return_candidates": True}
    async with serve(FakeEngine(candidates=VOTERS)) as s:
        d = (await s.client.post("/v1/align", json=body)).json()
        assert d["vote"] == {"answer": "4", "counts": {"4": 2.0, "5": 1.0, "7": 1.0}}
        fours = [c for c in d["candidates"] if "4" in c["text"]]
        assert d["text"] in [c["text"] for c in fours]
        assert d["weighted_score"] == max(c["weighted_score"] for c in fours)
        assert max(c["weighted_score"] for c in d["candidates"]) > d["weighted_score"]  # BoN would pick "7"
        assert d["algorithm"] == "vote" and d["kl_bound"] == pytest.approx(math.log(5))
        # weighted votes: at a small τ the best-scoring candidate's answer carries nearly all weight
        w = {**body, "vote": {"regex": r"\d+", "weighted": True}, "alignment_temperature": 0.01}
        assert (await s.client.post("/v1/align", json=w)).json()["vote"]["answer"] == "7"
        # the OpenAI routes: one choice, with the votes in its alignment
        chat = {"messages": [{"role": "user", "content": "Hi"}], "best_of": 5, "reward_weights": {"sentiment": 1.0},
                "alignment": "vote", "vote": {"regex": r"\d+"}}  # fmt: skip
        choice = (await s.client.post("/v1/chat/completions", json=chat)).json()["choices"][0]
        assert choice["alignment"]["vote"]["answer"] == "4" and "4" in choice["message"]["content"]
        # a scalar reward's value as the answer: the sentiment compound, one answer per text here
        by_reward = {**body, "vote": {"reward": "sentiment"}}
        d = (await s.client.post("/v1/align", json=by_reward)).json()
        assert len(d["vote"]["counts"]) == 5 and d["vote"]["answer"] == f"{d['scores']['sentiment']['raw']:g}"


@pytest.mark.parametrize(
    ("change", "param", "says"),
    [
        ({"vote": None}, None, "vote is required with algorithm: 'vote'"),
        ({"algorithm": "bon"}, None, "vote only applies with algorithm: 'vote'"),
        ({"vote": {"regex": "("}}, "vote.regex", "not a regular expression"),
        ({"vote": {"regex": "a", "reward": "sentiment"}}, "vote", "exactly one of regex, json_path or reward"),
        ({"vote": {"reward": "nope"}}, "vote.reward", "a reward that reads one value"),
        ({"budget": "auto", "target_score": 1.0}, None, "'vote' and budget: 'auto' cannot be combined"),
        ({"early_rejection": {}}, None, "'vote' and early_rejection cannot be combined"),
    ],
)
async def test_a_vote_that_cannot_run_is_a_400_naming_the_field(change, param, says):
    body = {**ALIGN, "algorithm": "vote", "vote": {"regex": r"\d+"}, **change}
    body = {k: v for k, v in body.items() if v is not None}
    async with serve() as s:
        r = await s.client.post("/v1/align", json=body)
        assert r.status_code == 400 and says in r.json()["error"]["message"], r.text
        assert r.json()["error"]["param"] == param
