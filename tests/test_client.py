"""The client SDK against the real server (vLLM, tiny model): happy paths and errors end to end.
Retry and error mapping in isolation run fast on httpx.MockTransport (test_client_transport.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import API_KEY

from iama_client import (
    APIConnectionError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    NotFoundError,
    RateLimitError,
)

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def client(tiny_server):
    with Client(base_url=tiny_server.url, api_key=API_KEY, timeout=1800) as c:
        yield c


def test_sync_happy_paths(client):
    since = datetime.now(UTC)  # the server is shared: count only the requests this test makes
    assert client.health().ready
    assert client.models().data[0].id
    rewards = client.rewards()
    assert {"sentiment", "clf", "short"} <= set(rewards.names)
    r = client.align(
        prompt="Hello there",
        reward_weights={"sentiment": 1.0, "short": 0.5},
        budget=3,
        max_tokens=8,
        seed=4,
        return_candidates=True,
    )
    assert len(r.candidates) == 3 and r.candidates[r.chosen_index].chosen
    assert r.scores["sentiment"].raw == r.candidates[r.chosen_index].scores["sentiment"].raw
    chat = client.chat([{"role": "user", "content": "hi"}], reward_weights={"short": 1.0}, best_of=2, max_tokens=6)
    assert chat.choices[0].alignment.budget == 2 and isinstance(chat.text, str)
    by_route = {t.group: t for t in client.usage(since=since, group_by="route").data}  # this key is an admin
    assert (by_route["/v1/align"].requests, by_route["/v1/align"].candidates) == (1, 3)
    assert (by_route["/v1/chat/completions"].requests, by_route["/v1/chat/completions"].candidates) == (1, 2)


def test_logprobs_and_response_format_through_the_sdk(client):
    chat = client.chat(
        [{"role": "user", "content": "hi"}], best_of=2, reward_weights={"short": 1.0}, max_tokens=6, seed=1,
        logprobs=True, top_logprobs=2,
    )  # fmt: skip
    content = chat.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object", "properties": {}}}}
    r = client.align(prompt="JSON", reward_weights={"short": 1.0}, budget=2, max_tokens=48, seed=2, response_format=fmt)
    assert r.text.lstrip().startswith("{")
    with pytest.raises(TypeError, match="response_format"):
        client.align(prompt="x", reward_weights={"short": 1.0}, response_format={"type": "yaml"})


def test_async_happy_paths(tiny_server):
    async def go():
        async with AsyncClient(base_url=tiny_server.url, api_key=API_KEY) as c:
            rs = await asyncio.gather(
                *(
                    c.align(
                        messages=[{"role": "user", "content": f"q{i}"}],
                        reward_weights={"sentiment": 1.0},
                        budget=2,
                        max_tokens=6,
                    )
                    for i in range(3)
                )
            )
            chat = await c.chat([{"role": "user", "content": "hi"}], max_tokens=4)
            return rs, chat, await c.rewards(), (await c.health()).ready

    rs, chat, rewards, ready = asyncio.run(go())
    assert [r.budget for r in rs] == [2, 2, 2] and chat.choices[0].alignment is None
    assert ready and "sentiment" in rewards.names


def test_errors_carry_message_and_field(client, tiny_server):
    with pytest.raises(BadRequestError) as err:
        client.align(prompt="x", reward_weights={"nope": 1.0})
    assert err.value.status_code == 400 and err.value.param == "reward_weights.nope"
    assert "unknown reward" in err.value.message
    with pytest.raises(BadRequestError) as err:
        client.align(prompt="x", reward_weights={"sentiment": 1.0}, budget=0)
    assert err.value.param == "budget"
    with pytest.raises(AuthenticationError):
        Client(base_url=tiny_server.url, api_key="wrong").rewards()
    with pytest.raises(NotFoundError):
        client.chat([{"role": "user", "content": "x"}], model="not-served")


def test_retries_get_every_request_of_a_burst_through(tiny_server):
    """More requests than the server admits (2 running + 6 queued): the refused ones are 429s
    with Retry-After, which the SDK honours until they get in. Whether a given request is
    refused depends on timing; that all of them finish must not (the retry budget is large)."""
    body = {"prompt": "go " * 30, "reward_weights": {"sentiment": 1.0}, "budget": 16, "max_tokens": 256}

    def patient(_):
        with Client(base_url=tiny_server.url, api_key=API_KEY, max_retries=600, backoff=0.2, timeout=1800) as c:
            return c.align(**body)

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        done = list(pool.map(patient, range(12)))
    assert len(done) == 12 and all(r.text is not None for r in done)

    async def burst():
        async with AsyncClient(base_url=tiny_server.url, api_key=API_KEY, max_retries=0, timeout=1800) as c:
            return await asyncio.gather(*(c.align(**body) for _ in range(20)), return_exceptions=True)

    results = asyncio.run(burst())
    assert all(isinstance(r, RateLimitError) or r.text is not None for r in results)
    for refused in (r for r in results if isinstance(r, RateLimitError)):
        assert refused.status_code == 429 and refused.retry_after >= 1 and refused.code == "overloaded"


def test_connection_error_after_retries():
    from servers import free_port

    c = Client(base_url=f"http://127.0.0.1:{free_port()}", max_retries=2, backoff=0.01)
    with pytest.raises(APIConnectionError):
        c.health()
    with pytest.raises(APIConnectionError):
        c.align(prompt="x", reward_weights={"a": 1})


def test_readme_client_examples_run_as_written(tiny_server, monkeypatch):
    """The SDK's page in docs/ and the README's SDK example, run as written against the server."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "client.md").read_text(), re.S)
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### The client SDK", 1)[1].split("\n### ", 1)[0]
    blocks += re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 3
    monkeypatch.setenv("IAMA_BASE_URL", tiny_server.url)
    monkeypatch.setenv("IAMA_API_KEY", API_KEY)
    for code in blocks:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
