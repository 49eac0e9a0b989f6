"""Rubric rewards on the request path, in-process: a rubric written in the request (or named in
the config) is judged by the engine in one round for all the candidates, weighted like any
reward, counted in the admission cost and in usage; bad rubrics are 400s naming the field; a
remote judge that is down is a 502 and the server stays healthy. The fake engine's judge rates
9 an answer sharing a word with the rubric, 0 one that does not (``FakeEngine.next_token_logprobs``);
the real judge's arithmetic is checked against transformers in ``test_server.py``."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fake_engine import CANDIDATES, FakeEngine
from in_process import serve, until

from iama.judging import expected_rating, judge_messages, level_logprobs, rating_of_alternatives, rating_token_ids
from iama.rewards import create_reward
from iama.rewards.judge import JudgeNeedsEngine

pytestmark = pytest.mark.inprocess

WEATHER = "talks about the weather tomorrow"  # shares "weather" and "tomorrow" with CANDIDATES[3] only
BODY = {"prompt": "How was your day?", "budget": 6, "max_tokens": 32, "return_candidates": True}


def test_the_rating_is_the_expectation_over_the_digits_renormalised():
    ratings = rating_token_ids([(0, "a"), *((10 + d, str(d)) for d in range(10)), (30, " 7"), (31, "▁7"), (32, "10")])
    assert ratings[30] == ratings[31] == 7 and 32 not in ratings and 0 not in ratings
    # all mass on 7 (split over its three tokens) and nothing else: 7/9
    lp = {17: math.log(0.2), 30: math.log(0.3), 31: math.log(0.1), 0: math.log(0.4)}
    assert level_logprobs(lp, ratings) == pytest.approx({7: math.log(0.6)})
    assert expected_rating(level_logprobs(lp, ratings)) == pytest.approx(7 / 9)
    # torn between 0 and 9: the middle; the mass off the digits does not count
    assert expected_rating({0: math.log(0.25), 9: math.log(0.25)}) == pytest.approx(0.5)
    assert expected_rating({}) == 0.5 and expected_rating({}, default=0.0) == 0.0
    p9, p2 = 2 * math.exp(-3.0), math.exp(-2.3)  # " 9" and "9" both write 9
    got = rating_of_alternatives([("Sure", -0.1), (" 9", -3.0), ("9", -3.0), ("2", -2.3)])
    assert got == pytest.approx((9 * p9 + 2 * p2) / (p9 + p2) / 9)
    with pytest.raises(ValueError, match=r"digit\(s\) \[3\]"):
        rating_token_ids([(d, str(d)) for d in range(10) if d != 3])


def test_the_judge_prompt_shares_everything_but_the_answer():
    a, b = judge_messages(WEATHER, "How was it?", "Sunny."), judge_messages(WEATHER, "How was it?", "Rainy.")
    (ma,), (mb,) = a, b
    common = len(ma["content"]) - len("Sunny.") - len(ma["content"].split("Sunny.")[1])
    assert ma["content"][:common] == mb["content"][:common] and ma["content"].index(WEATHER) < common


def test_a_judge_on_the_served_model_scores_only_on_an_alignment_server():
    judge = create_reward("judge", rubric=WEATHER)
    with pytest.raises(JudgeNeedsEngine, match="serving engine"):
        judge.score(["q"], ["a"])
    with pytest.raises(ValueError, match="not both"):
        create_reward("judge", rubric=WEATHER, model="m", url="http://x")
    with pytest.raises(ValueError, match="empty"):
        create_reward("judge", rubric="  ")


async def test_a_rubric_in_the_request_chooses_the_answer_it_describes_in_one_engine_round():
    engine = FakeEngine()
    async with serve(engine) as s:
        plain = (await s.client.post("/v1/align", json={**BODY, "reward_weights": {"sentiment": 1}})).json()
        assert plain["chosen_index"] != 3
        judged_before = len(engine.judged)
        body = {**BODY, "rubrics": {"weather": WEATHER}, "reward_weights": {"weather": 1, "sentiment": 0.1}}
        r = await s.client.post("/v1/align", json=body)
        assert r.status_code == 200, r.text
        d = r.json()
    assert d["chosen_index"] == 3 and d["text"] == CANDIDATES[3]
    raws = [c["scores"]["weather"]["raw"] for c in d["candidates"]]
    assert raws[3] == pytest.approx(1.0, abs=1e-3) and max(raws[:3] + raws[4:]) == pytest.approx(0.0, abs=1e-3)
    judge_prompts = engine.judged[judged_before:]
    assert len(judge_prompts) == 6  # one prompt per candidate, all in one round (the fake records per call)
    u = d["usage"]
    assert u["judge_tokens"] == sum(map(len, judge_prompts)) > 0
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] + u["judge_tokens"]


async def test_rubrics_on_the_openai_route_and_in_the_config():
    judge = {"type": "judge", "rubric": WEATHER}
    async with serve(rewards={"sentiment": {"type": "sentiment"}, "weather_judge": judge}, token_capacity=4096) as s:
        listed = {r["name"]: r for r in (await s.client.get("/v1/rewards")).json()["data"]}
        assert listed["weather_judge"]["ready"] and listed["weather_judge"]["type"] == "judge"
        chat = {"messages": [{"role": "user", "content": "How was your day?"}], "best_of": 6, "max_tokens": 32}
        r = await s.client.post("/v1/chat/completions", json={**chat, "reward_weights": {"weather_judge": 1}})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == CANDIDATES[3]
        body = {**chat, "rubrics": {"sad": "sad"}, "reward_weights": {"sad": 1, "weather_judge": 0}}
        r = await s.client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["choices"][0]["message"]["content"] == CANDIDATES[1] and d["usage"]["judge_tokens"] > 0
        scores = d["choices"][0]["alignment"]["scores"]
        assert scores["sad"]["raw"] == pytest.approx(1.0, abs=1e-3) and scores["weather_judge"]["raw"] < 0.01


@pytest.mark.parametrize(
    ("change", "param", "says"),
    [
        ({"rubrics": {"sentiment": "x"}, "reward_weights": {"sentiment": 1}}, "rubrics.sentiment", "installed"),
        ({"rubrics": {"kid": "x"}, "reward_weights": {"sentiment": 1}}, "rubrics.kid", "weight the rubric"),
        ({"rubrics": {"kid": " \n"}, "reward_weights": {"kid": 1}}, "rubrics.kid", "say something"),
        ({"rubrics": {"kid": "x" * 301}, "reward_weights": {"kid": 1}}, "rubrics.kid", "allows 300"),
        ({"rubrics": {f"r{i}": "x" for i in range(3)}, "reward_weights": {"r0": 1}}, "rubrics", "at most 2"),
        ({"rubrics": {"no spaces": "x"}, "reward_weights": {"sentiment": 1}}, "rubrics.no spaces", "pattern"),
        ({"rubrics": {"kid": "x" * 5000}, "reward_weights": {"kid": 1}}, "rubrics.kid", "4000"),
        ({"reward_weights": {"kid": 1}}, "reward_weights.kid", "unknown reward"),
    ],
)
async def test_bad_rubrics_are_400_naming_the_field(change, param, says):
    async with serve(max_rubrics=2, max_rubric_chars=300) as s:
        r = await s.client.post("/v1/align", json={**BODY, **change})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and says in err["message"], err


async def test_the_judge_counts_in_the_admission_cost_and_must_fit_the_context():
    body = {**BODY, "rubrics": {"weather": WEATHER}, "reward_weights": {"weather": 1}}
    async with serve() as s:
        cost_plain = s.state.calls.align(_align(BODY | {"reward_weights": {"sentiment": 1}}), "r").cost
        cost_judged = s.state.calls.align(_align(body), "r").cost
        assert cost_judged > cost_plain + 6 * 32  # each candidate's judge prompt holds its answer again
    async with serve(token_capacity=(cost_plain + cost_judged) // 2) as s:
        assert (await s.client.post("/v1/align", json={**BODY, "reward_weights": {"sentiment": 1}})).status_code == 200
        r = await s.client.post("/v1/align", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == "budget", r.text
    async with serve(FakeEngine(max_model_len=60), max_tokens=32) as s:
        r = await s.client.post("/v1/align", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == "rubrics.weather", r.text
        assert "context" in r.json()["error"]["message"]


async def test_early_rejection_judges_the_rubric_on_whole_answers_only():
    engine = FakeEngine()
    body = {
        **BODY,
        "rubrics": {"weather": WEATHER},
        "reward_weights": {"weather": 1, "sentiment": 1},
        "early_rejection": {"checkpoints": [2], "keep": 0.5},
    }
    async with serve(engine) as s:
        warm_up = len(engine.judged)  # the judge's warm-up read one answer
        engine.limit_tokens(2)  # every stream pauses at 2 tokens: the checkpoint happens by construction
        pending = asyncio.create_task(s.client.post("/v1/align", json=body))
        await until(lambda: len(engine.aborted) >= 3, "the checkpoint to stop half of the candidates")
        engine.limit_tokens(None)
        r = await pending
        assert r.status_code == 200, r.text
        d = r.json()
    (cp,) = d["early_rejection"]["checkpoints"]
    assert cp["rewards"] == ["sentiment"]
    rejected = [c for c in d["candidates"] if c.get("rejected_at") is not None]
    assert rejected and all("weather" not in c["scores"] for c in rejected)
    assert len(engine.judged) - warm_up == 6 - len(rejected)  # the survivors, whole


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible judge that always answers "7" for certain."""

    def do_GET(self) -> None:  # /v1/models
        self._send({"data": [{"id": "judge"}]})

    def do_POST(self) -> None:  # /v1/chat/completions
        self.rfile.read(int(self.headers["Content-Length"]))
        top = [{"token": "7", "logprob": 0.0}, {"token": "Sure", "logprob": -9.0}]
        self._send({"choices": [{"logprobs": {"content": [{"token": "7", "logprob": 0.0, "top_logprobs": top}]}}]})

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


async def test_a_remote_judge_that_goes_down_is_a_502_and_the_server_stays_healthy():
    judge_server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=judge_server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{judge_server.server_address[1]}"
    remote = {"type": "judge", "rubric": WEATHER, "url": url, "timeout_s": 5}
    async with serve(rewards={"short": {"type": "length", "target": 3}, "remote": remote}) as s:
        r = await s.client.post("/v1/align", json={**BODY, "reward_weights": {"remote": 1}})
        assert r.status_code == 200, r.text
        assert all(c["scores"]["remote"]["raw"] == pytest.approx(7 / 9) for c in r.json()["candidates"])
        judge_server.shutdown()
        judge_server.server_close()
        r = await s.client.post("/v1/align", json={**BODY, "reward_weights": {"remote": 1}})
        assert r.status_code == 502, r.text
        err = r.json()["error"]
        assert err["code"] == "upstream_error" and "\n" not in err["message"] and "127.0.0.1" not in err["message"]
        assert (await s.client.get("/health")).status_code == 200
        assert (await s.client.post("/v1/align", json={**BODY, "reward_weights": {"short": 1}})).status_code == 200


def _align(body: dict) -> object:
    from iama_server.schemas import AlignRequest

    return AlignRequest.model_validate(body)
