"""The SDK's retry policy and error mapping on ``httpx.MockTransport``: no server, no waiting."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from iama_client import (
    APIConnectionError,
    APIError,
    APIStatusError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    InternalServerError,
    RateLimitError,
    ServiceUnavailableError,
)

pytestmark = pytest.mark.inprocess

OK = {
    "id": "align-1",
    "created": 0,
    "model": "m",
    "text": "hi",
    "chosen_index": 0,
    "algorithm": "bon",
    "budget": 2,
    "reward_weights": {"a": 1.0},
    "weighted_score": 0.5,
    "scores": {"a": {"raw": 0.5, "normalized": 0.5}},
    "kl_bound": 0.19,
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    "timings": {"queue_s": 0, "generation_s": 0.1, "scoring_s": 0.01, "total_s": 0.2},
}


def scripted(*answers: httpx.Response | Exception) -> tuple[list[httpx.Request], httpx.MockTransport]:
    """A transport that answers each request with the next scripted answer."""
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return seen, httpx.MockTransport(handler)


def client(transport: httpx.MockTransport, **kw) -> Client:
    http = httpx.Client(transport=transport)
    return Client(base_url="http://iama", api_key="k", backoff=0.001, http_client=http, **kw)


def test_a_429_then_503_then_success_is_retried_with_retry_after_honoured(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr("iama_client.client.time.sleep", sleeps.append)
    seen, transport = scripted(
        httpx.Response(429, headers={"Retry-After": "3"}, json={"error": {"message": "busy", "code": "overloaded"}}),
        httpx.Response(503, json={"error": {"message": "starting"}}),
        httpx.Response(200, json=OK),
    )
    r = client(transport, max_retries=2).align("hi", reward_weights={"a": 1.0}, budget=2)
    assert r.text == "hi" and len(seen) == 3 and sleeps[0] == 3.0
    assert seen[0].headers["authorization"] == "Bearer k"
    assert seen[0].url == "http://iama/v1/align"
    import json

    assert json.loads(seen[0].content) == {"prompt": "hi", "reward_weights": {"a": 1.0}, "budget": 2}


def test_retries_run_out_and_the_last_error_is_raised(monkeypatch):
    monkeypatch.setattr("iama_client.client.time.sleep", lambda s: None)
    _, transport = scripted(*[httpx.Response(429, json={"error": {"message": "busy"}})] * 3)
    with pytest.raises(RateLimitError) as err:
        client(transport, max_retries=2).align("hi")
    assert err.value.status_code == 429 and isinstance(err.value, APIStatusError)


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, BadRequestError), (422, BadRequestError), (401, AuthenticationError), (500, InternalServerError)],
)
def test_other_errors_are_never_retried_and_keep_message_and_field(status, cls):
    body = {"error": {"message": "bad weight", "param": "reward_weights.a", "code": "invalid_reward_weights"}}
    seen, transport = scripted(httpx.Response(status, json=body), httpx.Response(200, json=OK))
    with pytest.raises(cls) as err:
        client(transport, max_retries=5).align("hi")
    assert len(seen) == 1  # a request is never run twice
    e = err.value
    assert (e.message, e.param, e.code) == ("bad weight", "reward_weights.a", "invalid_reward_weights")


def test_a_proxy_html_page_is_a_status_error_not_a_json_error():
    _, transport = scripted(httpx.Response(502, text="<html><body>Bad Gateway</body></html>"))
    with pytest.raises(InternalServerError) as err:
        client(transport, max_retries=0).align("hi")
    assert err.value.status_code == 502 and "Bad Gateway" in err.value.message


def test_connection_errors_are_retried_then_raised_as_api_errors(monkeypatch):
    monkeypatch.setattr("iama_client.client.time.sleep", lambda s: None)
    seen, transport = scripted(*[httpx.ConnectError("refused")] * 3)
    with pytest.raises(APIConnectionError) as err:
        client(transport, max_retries=2).align("hi")
    assert len(seen) == 3 and isinstance(err.value, APIError)


def test_a_bad_argument_is_a_type_error_before_anything_is_sent():
    seen, transport = scripted()
    with pytest.raises(TypeError, match="budgett"):
        client(transport).align("hi", budgett=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="budget"):
        client(transport).align("hi", budget="many")  # type: ignore[arg-type]
    assert seen == []


def test_async_client_shares_the_calls_and_the_policy(monkeypatch):
    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr("iama_client.client.asyncio.sleep", no_sleep)
    seen: list[httpx.Request] = []
    answers = [httpx.Response(503, json={"error": {"message": "starting"}}), httpx.Response(200, json=OK)]

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    async def go() -> str:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with AsyncClient(base_url="http://iama", http_client=http, backoff=0.001) as c:
            return (await c.align(messages=[{"role": "user", "content": "x"}], budget=2)).text

    assert asyncio.run(go()) == "hi" and len(seen) == 2
    _, transport = scripted(httpx.Response(503, json={"error": {"message": "starting"}}))
    with pytest.raises(ServiceUnavailableError):
        client(transport, max_retries=0).rewards()


def test_timeouts_connect_is_short_read_is_long_and_a_call_can_override():
    c = Client(base_url="http://iama", timeout=300, connect_timeout=3)
    assert (c.config.timeout.connect, c.config.timeout.read) == (3, 300)
    seen, transport = scripted(httpx.Response(200, json=OK), httpx.Response(200, json=OK))
    c = client(transport)
    c.align("hi")
    c.align("hi", timeout=7)
    assert seen[0].extensions["timeout"]["read"] == 120.0 and seen[0].extensions["timeout"]["connect"] == 10.0
    assert seen[1].extensions["timeout"]["read"] == 7 and seen[1].extensions["timeout"]["connect"] == 10.0


def test_an_openai_style_base_url_ending_in_v1_works():
    seen, transport = scripted(httpx.Response(200, json=OK))
    Client(base_url="http://iama/v1/", http_client=httpx.Client(transport=transport)).align("hi")
    assert str(seen[0].url) == "http://iama/v1/align"


def sse_body(*events: dict | str) -> bytes:
    import json

    return b"".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events)


CHUNK = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}


def test_chat_stream_yields_chunks_until_done():
    events = [
        {**CHUNK, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**CHUNK, "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {**CHUNK, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
        {**CHUNK, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}},
        "[DONE]",
    ]
    seen, transport = scripted(httpx.Response(200, content=sse_body(*events)))
    chunks = list(client(transport).chat_stream([{"role": "user", "content": "hi"}], max_tokens=4))
    assert "".join(c.text for c in chunks) == "Hello" and chunks[-1].usage.completion_tokens == 2
    import json

    assert json.loads(seen[0].content)["stream"] is True


def test_a_stream_refused_is_retried_but_an_error_mid_stream_is_raised_not_retried(monkeypatch):
    monkeypatch.setattr("iama_client.client.time.sleep", lambda s: None)
    timeout_event = {"error": {"message": "request exceeded the server's timeout", "code": "timeout"}}
    body = sse_body({**CHUNK, "choices": [{"index": 0, "delta": {"content": "a"}}]}, timeout_event, "[DONE]")
    seen, transport = scripted(
        httpx.Response(429, json={"error": {"message": "busy"}}), httpx.Response(200, content=body)
    )
    got = []
    with pytest.raises(APIError) as err:
        for chunk in client(transport, max_retries=3).chat_stream([{"role": "user", "content": "hi"}]):
            got.append(chunk.text)
    assert got == ["a"] and err.value.code == "timeout" and len(seen) == 2


def test_operator_calls_send_the_same_requests_from_both_clients():
    """Method, path (an adapter name quoted whole), query (None left out) and body of the
    operator calls, from the sync and the async client alike (one definition in ``calls.py``)."""
    usage = {"object": "usage", "group_by": "day", "data": []}
    card = {"id": "a/b", "object": "model", "created": 0, "owned_by": "iama", "root": "/m", "parent": "base"}

    def answers() -> list[httpx.Response]:
        deleted = {"id": "a/b", "object": "model", "deleted": True}
        return [httpx.Response(200, json=usage), httpx.Response(200, json=card), httpx.Response(200, json=deleted)]

    def calls(c):
        return [
            lambda: c.usage(key="acme", since="2026-12-01T00:00:00+01:00", group_by="day"),
            lambda: c.load_adapter("a/b", "/m"),
            lambda: c.unload_adapter("a/b"),
        ]

    def shape(seen: list[httpx.Request]) -> list[tuple[str, str, dict[str, str], bytes]]:
        return [(r.method, r.url.raw_path.decode().split("?")[0], dict(r.url.params), r.content) for r in seen]

    seen_sync, transport = scripted(*answers())
    with client(transport) as c:
        results = [call() for call in calls(c)]
    assert results[0].group_by == "day" and results[1].parent == "base" and results[2].deleted

    seen_async, atransport = scripted(*answers())

    async def run() -> None:
        http = httpx.AsyncClient(transport=atransport)
        async with http, AsyncClient(base_url="http://iama", api_key="k", http_client=http) as c:
            for call in calls(c):
                await call()

    asyncio.run(run())
    assert (
        shape(seen_sync)
        == shape(seen_async)
        == [
            ("GET", "/v1/usage", {"key": "acme", "since": "2026-12-01T00:00:00+01:00", "group_by": "day"}, b""),
            ("POST", "/v1/adapters", {}, b'{"name":"a/b","path":"/m"}'),
            ("DELETE", "/v1/adapters/a%2Fb", {}, b""),
        ]
    )
