"""Early rejection and the adaptive budget, in-process with the fake engine: which candidates
are stopped (and that they really are: aborted in the engine), the report, equivalence with
plain BoN when nothing is stopped, and bad values as 400s naming the field."""

from __future__ import annotations

import asyncio
import math

import pytest
from exposition import metric
from fake_engine import CANDIDATES
from in_process import serve, until

from iama.seeds import candidate_seed

pytestmark = pytest.mark.inprocess

ALIGN = {"prompt": "How was your day?", "budget": 8, "max_tokens": 16, "seed": 0, "return_candidates": True}
ER = {"checkpoints": [2], "keep": 0.5}


async def test_the_weakest_running_candidates_are_stopped_at_the_checkpoint():
    async with serve() as s:
        s.engine.limit_tokens(2)  # every stream pauses at 2 tokens: the checkpoint happens by construction
        body = {**ALIGN, "reward_weights": {"sentiment": 1.0, "short": 1.0}, "early_rejection": ER}
        pending = asyncio.create_task(s.client.post("/v1/align", json=body))
        await until(lambda: len(s.engine.aborted) >= 3)
        assert len(s.engine.running) == 3  # the kept ones wait at the limit; the rejected left the engine
        s.engine.limit_tokens(None)
        d = (await pending).json()
        text = (await s.client.get("/metrics")).text
    report = d["early_rejection"]
    (cp,) = report["checkpoints"]
    # candidate j is the fake's text for its seed; "Fine." and "Ok." finish with one word before
    # the checkpoint: never rejected
    texts = [CANDIDATES[candidate_seed(0, j) % len(CANDIDATES)] for j in range(8)]
    running = [j for j, t in enumerate(texts) if len(t.split()) > 2]
    assert cp["tokens"] == 2 and cp["rewards"] == ["sentiment"]  # length cannot judge a partial text
    assert sorted(cp["kept"] + cp["rejected"]) == running and len(running) == 6 and len(cp["rejected"]) == 3
    cands = d["candidates"]
    for j in cp["rejected"]:
        assert cands[j]["finish_reason"] == "rejected" and cands[j]["rejected_at"] == 2
        assert cands[j]["text"] == " ".join(texts[j].split()[:2]) and set(cands[j]["scores"]) == {"sentiment"}
        assert not cands[j]["chosen"]
    assert d["chosen_index"] not in cp["rejected"]
    generated = sum(c["completion_tokens"] for c in cands)
    assert report["generated_tokens"] == d["usage"]["completion_tokens"] == generated
    assert report["plain_bon_tokens_bound"] == generated + 3 * (16 - 2)
    assert d["kl_bound"] == pytest.approx(math.log(8))  # not exact BoN: the generic bound
    assert metric(text, "iama_candidates_aborted_total") == 3
    assert metric(text, "iama_tokens_saved_total") == 3 * 14
    # the 6 running candidates scored once at the checkpoint, then only the 5 that were not stopped:
    # a rejected candidate keeps the scores that decided, it is not scored again
    assert metric(text, "iama_scored_completions_total") == 6 + 5


async def test_with_nothing_rejected_the_candidates_are_plain_bons():
    async with serve() as s:
        plain = (await s.client.post("/v1/align", json={**ALIGN, "reward_weights": {"sentiment": 1}})).json()
        body = {**ALIGN, "reward_weights": {"sentiment": 1}, "early_rejection": {"checkpoints": [1, 3], "keep": 1.0}}
        er = (await s.client.post("/v1/align", json=body)).json()
    assert [c["text"] for c in er["candidates"]] == [c["text"] for c in plain["candidates"]]
    assert er["chosen_index"] == plain["chosen_index"] and er["text"] == plain["text"]
    assert all(not cp["rejected"] for cp in er["early_rejection"]["checkpoints"])


async def test_without_a_reward_that_judges_partial_text_nothing_is_rejected():
    async with serve() as s:
        body = {**ALIGN, "reward_weights": {"short": 1.0}, "early_rejection": ER}
        d = (await s.client.post("/v1/align", json=body)).json()
    assert d["early_rejection"]["checkpoints"] == [] and all(c.get("rejected_at") is None for c in d["candidates"])


async def test_adaptive_budget_stops_at_the_first_wave_that_reaches_the_target():
    async with serve() as s:
        easy = {**ALIGN, "reward_weights": {"sentiment": 1}, "budget": "auto", "target_score": -1.0}
        d = (await s.client.post("/v1/align", json=easy)).json()
        assert d["budget_spent"] == 2 and len(d["candidates"]) == 2 and d["budget"] == 8
        calls = len(s.engine.calls)
        scored = metric((await s.client.get("/metrics")).text, "iama_scored_completions_total")
        hard = {**easy, "target_score": 5.0, "max_budget": 6}
        d = (await s.client.post("/v1/align", json=hard)).json()
        assert d["budget_spent"] == 6 and len(s.engine.calls) - calls == 6  # waves 2, 4, 6: one request each
        # every candidate scored once, in its wave; the response reports those scores
        assert metric((await s.client.get("/metrics")).text, "iama_scored_completions_total") - scored == 6
        plain_body = {**ALIGN, "reward_weights": {"sentiment": 1}, "budget": 6}
        plain = (await s.client.post("/v1/align", json=plain_body)).json()
        assert [c["text"] for c in d["candidates"]] == [c["text"] for c in plain["candidates"]]
        assert [c["scores"] for c in d["candidates"]] == [c["scores"] for c in plain["candidates"]]
        assert d["chosen_index"] == plain["chosen_index"]
        text = (await s.client.get("/metrics")).text
        assert metric(text, "iama_budget_spent_count") == 2


async def test_the_openai_routes_take_the_same_options():
    async with serve() as s:
        body = {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 16,
            "seed": 0,
            "best_of": 8,
            "reward_weights": {"sentiment": 1},
            "early_rejection": {"checkpoints": [1], "keep": 0.25},
        }
        s.engine.limit_tokens(1)
        pending = asyncio.create_task(s.client.post("/v1/chat/completions", json=body))
        await until(lambda: len(s.engine.aborted) >= 4)  # ceil(0.25 · 6 running) = 2 kept
        s.engine.limit_tokens(None)
        d = (await pending).json()
        (cp,) = d["choices"][0]["alignment"]["early_rejection"]["checkpoints"]
        assert cp["tokens"] == 1 and len(cp["kept"]) == 2 and len(cp["rejected"]) == 4
        auto = {**body, "best_of": "auto", "target_score": -1.0}
        del auto["early_rejection"]
        d = (await s.client.post("/v1/chat/completions", json=auto)).json()
        assert d["choices"][0]["alignment"]["budget_spent"] == 2


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"early_rejection": {"checkpoints": [32, 16], "keep": 0.5}}, "early_rejection.checkpoints"),
        ({"early_rejection": {"checkpoints": [], "keep": 0.5}}, "early_rejection.checkpoints"),
        ({"early_rejection": {"checkpoints": [8], "keep": 0}}, "early_rejection.keep"),
        ({"early_rejection": {"checkpoints": [8], "keep": 1.5}}, "early_rejection.keep"),
        ({"early_rejection": {"checkpoints": [8], "oversample": "yes"}}, "early_rejection.oversample"),
        ({"target_score": 1.0}, None),
        ({"budget": "auto"}, None),
        ({"budget": "auto", "target_score": 1.0, "max_budget": 9}, "max_budget"),
        ({"budget": "auto", "target_score": 1.0, "early_rejection": ER}, None),
        ({"budget": "all"}, "budget"),
    ],
)
async def test_bad_values_are_400s_naming_the_field(extra, param):
    async with serve() as s:
        r = await s.client.post("/v1/align", json={**ALIGN, "reward_weights": {"sentiment": 1}, **extra})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        if param is not None:
            assert err["param"] == param, err
        else:  # a cross-field rule: the message names the fields
            assert "target_score" in err["message"] or "early_rejection" in err["message"], err
        assert s.engine.calls == []


async def test_checkpoints_as_fractions_of_max_tokens():
    async with serve() as s:
        s.engine.limit_tokens(4)  # ⌈0.25 · 16⌉ = 4: every stream waits there, so the checkpoint happens
        er = {"checkpoints": [0.25], "keep": 0.5}
        body = {**ALIGN, "reward_weights": {"sentiment": 1.0}, "early_rejection": er}
        pending = asyncio.create_task(s.client.post("/v1/align", json=body))
        await until(lambda: len(s.engine.aborted) >= 1)
        s.engine.limit_tokens(None)
        d = (await pending).json()
        (cp,) = d["early_rejection"]["checkpoints"]
        assert cp["tokens"] == 4 and cp["rejected"]
        for bad in ([0.5, 16], [0.5, 0.25], [1.5], [0.0]):
            r = await s.client.post("/v1/align", json={**body, "early_rejection": {"checkpoints": bad, "keep": 0.5}})
            assert r.status_code == 400 and r.json()["error"]["param"].startswith("early_rejection.checkpoints"), bad
        # two fractions that round to the same token count
        same = {**body, "max_tokens": 4, "early_rejection": {"checkpoints": [0.3, 0.4], "keep": 0.5}}
        r = await s.client.post("/v1/align", json=same)
        assert r.status_code == 400 and r.json()["error"]["param"] == "early_rejection.checkpoints"


async def test_left_out_checkpoints_and_keep_are_the_servers():
    async with serve(early_rejection_checkpoints=[0.25], early_rejection_keep=0.5) as s:
        s.engine.limit_tokens(4)  # the server's ⌈0.25 · 16⌉ = 4
        body = {**ALIGN, "reward_weights": {"sentiment": 1.0}, "early_rejection": {}}
        pending = asyncio.create_task(s.client.post("/v1/align", json=body))
        await until(lambda: len(s.engine.aborted) >= 1)
        s.engine.limit_tokens(None)
        d = (await pending).json()
    report = d["early_rejection"]
    (cp,) = report["checkpoints"]
    assert cp["tokens"] == 4 and report["keep"] == 0.5 and report["candidates_started"] == 8
    assert len(cp["kept"]) == math.ceil(0.5 * (len(cp["kept"]) + len(cp["rejected"])))


def test_the_servers_default_checkpoints_are_checked_at_start_up():
    from pydantic import ValidationError

    from iama_server.settings import ServerSettings

    with pytest.raises(ValidationError, match="increase strictly"):
        ServerSettings(early_rejection_checkpoints=[0.5, 0.25])


async def test_oversampling_starts_more_candidates_within_plain_bons_token_cost():
    async with serve() as s:
        weights = {"sentiment": 1.0}
        plain = (await s.client.post("/v1/align", json={**ALIGN, "budget": 4, "reward_weights": weights})).json()
        er = {"checkpoints": [2], "keep": 0.25, "oversample": True}
        body = {**ALIGN, "budget": 4, "reward_weights": weights, "early_rejection": er}
        s.engine.limit_tokens(2)
        pending = asyncio.create_task(s.client.post("/v1/align", json=body))
        await until(lambda: len(s.engine.aborted) >= 1)
        s.engine.limit_tokens(None)
        d = (await pending).json()
        text = (await s.client.get("/metrics")).text
    report = d["early_rejection"]
    # 11 candidates to 2 tokens, ⌈11/4⌉ = 3 on to 16: 22 + 3 · 14 = 64 = plain BoN_4's 4 × 16
    assert report["candidates_started"] == 11 and len(d["candidates"]) == 11 and d["budget"] == 4
    assert report["generated_tokens"] <= 4 * 16
    # the first four are plain BoN_4's candidates (same seeds): over-sampling only adds
    for mine, theirs in zip(d["candidates"][:4], plain["candidates"], strict=True):
        if mine.get("rejected_at") is None:
            assert mine["text"] == theirs["text"]
        else:
            assert theirs["text"].startswith(mine["text"]) and mine["rejected_at"] == 2
    chosen = d["candidates"][d["chosen_index"]]
    assert chosen["chosen"] and chosen.get("rejected_at") is None
    # admission still counts N × max_tokens: the start fits in it by construction
    assert metric(text, "iama_token_capacity_in_use") == 0


LONG = [
    "I love this wonderful day and the happy people around me today",
    "This is terrible and sad and broken and awful in every way",
    "A calm neutral statement about the weather today and tomorrow too",
    "Happy happy joy what a lovely and beautiful morning it is now",
]


async def test_a_sole_survivor_streams_as_it_is_generated():
    """keep → one survivor at the checkpoint: its text streams while it is still generating
    (the fake engine holds it at 2 tokens, so this is by construction, not by timing)."""
    import json

    from fake_engine import FakeEngine
    from in_process import raw_post

    async with serve(FakeEngine(candidates=LONG)) as s:
        s.engine.limit_tokens(2)
        body = {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 16,
            "seed": 0,
            "best_of": 4,
            "reward_weights": {"sentiment": 1},
            "early_rejection": {"checkpoints": [2], "keep": 0.01},
            "stream": True,
            "stream_options": {"include_usage": True},
        }

        def streamed() -> tuple[list[dict], str]:
            """The events sent so far, and the content their deltas carry (the role chunk has none)."""
            events = [json.loads(e[6:]) for e in call.body().decode().split("\n\n") if e.startswith("data: {")]
            return events, "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])

        call = raw_post(s.app, "/v1/chat/completions", body)
        await until(lambda: len(s.engine.aborted) == 3)  # three rejected, one left: it is the answer
        # Its first two tokens reach the client while it is still held at 2 tokens, unfinished.
        await until(lambda: len(streamed()[1].split()) == 2)
        assert len(s.engine.running) == 1
        s.engine.limit_tokens(None)
        await call.task
        events, text = streamed()
        assert call.status() == 200 and call.body().endswith(b"data: [DONE]\n\n")
        assert events[-1]["usage"]["completion_tokens"] > 0
        (recorded,) = s.state.usage.totals(None, None, None, None)  # the outcome's count, not the stream's tally
        assert (recorded.requests, recorded.generated_tokens) == (1, events[-1]["usage"]["completion_tokens"])
        assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"
        unstreamed = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        same = (await s.client.post("/v1/chat/completions", json=unstreamed)).json()
        assert text == same["choices"][0]["message"]["content"]  # the same answer as without streaming


async def test_several_survivors_stream_after_selection():
    async with serve() as s:
        body = {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 16,
            "seed": 0,
            "best_of": 8,
            "reward_weights": {"sentiment": 1},
            "early_rejection": {"checkpoints": [1], "keep": 1.0},
            "stream": True,
        }
        r = await s.client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        unstreamed = {k: v for k, v in body.items() if k != "stream"}
        same = (await s.client.post("/v1/chat/completions", json=unstreamed)).json()
        import json

        chunks = [json.loads(line[6:]) for line in r.text.split("\n\n") if line.startswith("data: {")]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert text == same["choices"][0]["message"]["content"]
