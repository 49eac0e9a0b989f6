"""OpenAI-compatible completeness, through the official ``openai`` SDK against the real app
in-process (fake engine): token-id prompts, log-probs (completions, chat, echo, streaming),
``response_format``, and the refusals that remain. The same calls against real vLLM are in
``test_openai_compat_vllm.py``.
"""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from fake_engine import FakeEngine
from in_process import API_KEY, serve, until

from iama_server.engine import InvalidEngineInput

pytestmark = pytest.mark.inprocess

CHAT = [{"role": "user", "content": "Hi there"}]
ALIGNED = {"best_of": 4, "reward_weights": {"sentiment": 1}}


def sdk(s) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://iama/v1", api_key=API_KEY, http_client=s.client)


async def test_token_id_prompts_as_openai_and_vllm_accept_them():
    async with serve() as s:
        client = sdk(s)
        ids = s.engine.encode_text("How was your day")
        one = await client.completions.create(model="fake", prompt=ids, max_tokens=4)
        assert s.engine.calls[-1][0] == ids
        assert len(one.choices) == 1
        two = await client.completions.create(model="fake", prompt=[ids, ids[:2]], max_tokens=4, extra_body=ALIGNED)
        assert [c.index for c in two.choices] == [0, 1]
        assert [call[0] for call in s.engine.calls[-2:]] in ([ids, ids[:2]], [ids[:2], ids])

        for bad, why in [([[]], "empty"), ([10**6], "out of vocabulary"), ([-1], "neg")]:
            with pytest.raises(openai.BadRequestError) as err:
                await client.completions.create(model="fake", prompt=bad, max_tokens=4)
            assert err.value.body["param"].startswith("prompt"), why
        with pytest.raises(openai.BadRequestError) as err:
            await client.completions.create(model="fake", prompt=[1] * 51, max_tokens=4)
        assert err.value.body["code"] == "prompt_too_long"


async def test_completion_logprobs_are_the_chosen_candidates():
    async with serve() as s:
        r = await sdk(s).completions.create(model="fake", prompt="Hello", max_tokens=16, logprobs=2, extra_body=ALIGNED)
        c = r.choices[0]
        lp = c.logprobs
        assert "".join(lp.tokens) == c.text  # the chosen candidate's own tokens
        assert len(lp.token_logprobs) == len(c.text.split())
        assert all(isinstance(x, float) and x < 0 for x in lp.token_logprobs)
        for tok, x, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
            assert top[tok] == x and len(top) <= 3 and max(top.values()) == x
        assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
        assert c.model_extra["alignment"]["budget"] == 4
        plain = await sdk(s).completions.create(model="fake", prompt="Hello", max_tokens=4)
        assert plain.choices[0].logprobs is None  # not asked: not computed
        assert s.engine.calls[-1][1].logprobs is None


async def test_echo_returns_the_prompt_and_its_logprobs_as_harnesses_need():
    """lm-eval's log-likelihood request: echo, logprobs 1, max_tokens 1, temperature 0."""
    async with serve() as s:
        prompt = "The cat sat on the mat"
        r = await sdk(s).completions.create(
            model="fake", prompt=prompt, max_tokens=1, logprobs=1, echo=True, temperature=0
        )
        c = r.choices[0]
        lp = c.logprobs
        n_prompt = len(prompt.split())
        assert c.text.startswith(prompt) and len(lp.tokens) == n_prompt + 1
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts the first token
        assert all(x is not None for x in lp.token_logprobs[1:])
        assert "".join(lp.tokens) == c.text
        assert s.engine.calls[-1][1].prompt_logprobs == 1
        echoed = await sdk(s).completions.create(model="fake", prompt=prompt, max_tokens=2, echo=True)
        assert echoed.choices[0].text.startswith(prompt) and echoed.choices[0].logprobs is None
        assert s.engine.calls[-1][1].prompt_logprobs is None


async def test_chat_logprobs_and_top_logprobs():
    async with serve() as s:
        r = await sdk(s).chat.completions.create(
            model="fake", messages=CHAT, max_tokens=16, logprobs=True, top_logprobs=3, extra_body=ALIGNED
        )
        c = r.choices[0]
        content = c.logprobs.content
        assert "".join(t.token for t in content) == c.message.content
        for t in content:
            assert bytes(t.bytes).decode() == t.token
            assert len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob == t.logprob
        only = await sdk(s).chat.completions.create(model="fake", messages=CHAT, max_tokens=4, logprobs=True)
        assert all(t.top_logprobs == [] for t in only.choices[0].logprobs.content)
        for bad, param in [
            ({"top_logprobs": 2}, "top_logprobs"),
            ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ]:
            with pytest.raises(openai.BadRequestError) as err:
                await sdk(s).chat.completions.create(model="fake", messages=CHAT, max_tokens=4, **bad)
            assert err.value.body["param"] == param


async def test_streamed_logprobs_plain_and_aligned():
    async with serve() as s:
        client = sdk(s)
        for extra in ({}, ALIGNED):
            stream = await client.chat.completions.create(
                model="fake", messages=CHAT, max_tokens=16, logprobs=True, top_logprobs=1, stream=True, extra_body=extra
            )
            pieces = [ch.choices[0] async for ch in stream if ch.choices]
            text = "".join(p.delta.content or "" for p in pieces)
            tokens = [t.token for p in pieces if p.logprobs for t in p.logprobs.content]
            assert text and "".join(tokens) == text, extra
        stream = await client.completions.create(
            model="fake", prompt="One two three", max_tokens=8, logprobs=0, echo=True, stream=True
        )
        chunks = [ch.choices[0] async for ch in stream]
        assert chunks[0].text == "One two three" and chunks[0].logprobs.token_logprobs[0] is None
        offsets = [o for ch in chunks if ch.logprobs for o in ch.logprobs.text_offset]
        assert offsets == sorted(offsets) and offsets[0] == 0


async def test_early_rejection_returns_the_survivors_logprobs():
    async with serve() as s:
        er = {**ALIGNED, "best_of": 8, "early_rejection": {"checkpoints": [1], "keep": 0.25}}
        s.engine.limit_tokens(1)  # the checkpoint is reached by construction
        pending = asyncio.create_task(
            sdk(s).completions.create(
                model="fake", prompt="Hello", max_tokens=16, seed=0, logprobs=1, echo=True, extra_body=er
            )
        )
        await until(lambda: len(s.engine.aborted) >= 4)
        s.engine.limit_tokens(None)
        c = (await pending).choices[0]
        (cp,) = c.model_extra["alignment"]["early_rejection"]["checkpoints"]
        assert cp["rejected"]
        assert c.text.startswith("Hello") and "".join(c.logprobs.tokens) == c.text
        assert c.logprobs.token_logprobs[0] is None  # the prompt's, from candidate 0 even if it was rejected
        asked = [call[1].prompt_logprobs for call in s.engine.calls[-8:]]
        assert sorted(asked, key=str) == [1] + [None] * 7  # the prompt is scored once


async def test_response_format_constrains_every_candidate_to_json():
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    async with serve() as s:
        client = sdk(s)
        r = await client.chat.completions.create(
            model="fake",
            messages=CHAT,
            max_tokens=32,
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
            extra_body=ALIGNED,
        )
        assert json.loads(r.choices[0].message.content)["answer"]
        sampling = s.engine.calls[-1][1]
        assert sampling.structured is not None and sampling.structured.json_schema == schema
        await client.completions.create(
            model="fake", prompt="x", max_tokens=32, extra_body={"response_format": {"type": "json_object"}}
        )  # the SDK has no such parameter on completions; vLLM has, and so have we
        assert s.engine.calls[-1][1].structured.json_schema is None
        await client.chat.completions.create(model="fake", messages=CHAT, response_format={"type": "text"})
        assert s.engine.calls[-1][1].structured is None
        aligned = await s.client.post(
            "/v1/align",
            json={
                "prompt": "x",
                "reward_weights": {"sentiment": 1},
                "budget": 3,
                "response_format": {"type": "json_object"},
            },
        )
        assert aligned.status_code == 200 and json.loads(aligned.json()["text"])

        cases = [
            ({"type": "json_schema"}, "response_format"),
            ({"type": "json_object", "json_schema": {"schema": schema}}, "response_format"),
            ({"type": "xml"}, "response_format.type"),
            ({"type": "json_schema", "json_schema": {"name": "a"}}, "response_format.json_schema.schema"),
        ]
        for fmt, param in cases:
            with pytest.raises(openai.BadRequestError) as err:
                await client.chat.completions.create(model="fake", messages=CHAT, response_format=fmt)
            assert err.value.body["param"] == param, fmt


class _RefusingEngine(FakeEngine):
    """What vLLM does with a schema its grammar compiler rejects: a client error at submission."""

    async def generate(self, prompt_ids, sampling, n, request_id):
        if sampling.structured is not None:
            raise InvalidEngineInput("Grammar error: Invalid type: nonsense", "response_format")
        return await super().generate(prompt_ids, sampling, n, request_id)


async def test_a_schema_the_engine_refuses_is_a_400_naming_response_format():
    async with serve(_RefusingEngine()) as s:
        fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "nonsense"}}}
        with pytest.raises(openai.BadRequestError) as err:
            await sdk(s).chat.completions.create(model="fake", messages=CHAT, response_format=fmt)
        assert err.value.body["param"] == "response_format" and "nonsense" in err.value.body["message"]
        assert (await s.client.get("/health")).status_code == 200


async def test_greedy_best_of_n_is_refused_naming_temperature():
    async with serve() as s:
        with pytest.raises(openai.BadRequestError) as err:
            await sdk(s).chat.completions.create(model="fake", messages=CHAT, temperature=0, extra_body=ALIGNED)
        assert err.value.body["param"] == "temperature"
        greedy = await sdk(s).chat.completions.create(model="fake", messages=CHAT, temperature=0)
        assert greedy.choices[0].message.content


async def test_vllm_streaming_extensions_that_load_generators_send():
    """guidellm sends vLLM's ``stream_options.continuous_usage_stats`` and ``ignore_eos``."""
    async with serve() as s:
        for extra in ({}, ALIGNED):
            stream = await sdk(s).chat.completions.create(
                model="fake",
                messages=CHAT,
                max_tokens=16,
                stream=True,
                stream_options={"include_usage": True, "continuous_usage_stats": True},
                extra_body={**extra, "ignore_eos": True},
            )
            chunks = [c async for c in stream]
            with_text = [c for c in chunks if c.choices and c.choices[0].delta.content]
            assert with_text and all(c.usage is not None for c in with_text), extra
            counts = [c.usage.completion_tokens for c in with_text]
            assert counts == sorted(counts) and chunks[-1].usage.completion_tokens >= counts[-1]
            assert s.engine.calls[-1][1].ignore_eos
