"""The synchronous and asynchronous clients. Each call is defined once in ``calls.py``; the two
classes differ only in how they send it (and wait between retries).

Every method takes ``timeout=`` for that call alone (seconds, or an ``httpx.Timeout``); the
client's own timeout is a read timeout for the whole answer plus a short connect timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import httpx
from typing_extensions import Unpack

from iama_client import calls
from iama_client.calls import Call, R
from iama_client.errors import APIConnectionError, APIError, APITimeoutError
from iama_client.models import (
    AdapterDeleted,
    AlignParams,
    AlignResponse,
    ChatCompletion,
    ChatCompletionChunk,
    ChatParams,
    Health,
    MessagesLike,
    ModelInfo,
    ModelList,
    RewardsList,
    UsageGroup,
    UsageReport,
)
from iama_client.transport import (
    DONE,
    ClientConfig,
    Timeout,
    as_timeout,
    raise_for_status,
    retry_delay_or_raise,
    sse_payload,
)


class Client:
    """Synchronous client. Arguments fall back to ``IAMA_BASE_URL`` / ``IAMA_API_KEY``.

    ``max_retries`` retries 429/503 answers (honouring ``Retry-After``) and connection
    failures with exponential backoff; other errors raise at once.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: Timeout = 120.0,
        connect_timeout: float = 10.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.config = ClientConfig(base_url, api_key, timeout, connect_timeout, max_retries, backoff, max_backoff)
        self._http = http_client or httpx.Client(timeout=self.config.timeout)
        self._owns_http = http_client is None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def _timeout(self, timeout: Timeout | None) -> httpx.Timeout:
        return self.config.timeout if timeout is None else as_timeout(timeout, self.config.connect_timeout)

    def _send(self, call: Call[R], timeout: Timeout | None = None) -> R:
        url = self.config.url(call.path)
        for attempt in range(self.config.max_retries + 1):
            try:
                resp = self._http.request(
                    call.method,
                    url,
                    json=call.body,
                    params=call.params,
                    headers=self.config.headers(),
                    timeout=self._timeout(timeout),
                )
                raise_for_status(resp)
                return call.response.model_validate(resp.json())
            except (APIError, httpx.TransportError) as exc:
                time.sleep(retry_delay_or_raise(self.config, exc, attempt, url))
        raise AssertionError("unreachable")

    def _events(self, call: Call[Any], timeout: Timeout | None) -> Iterator[dict[str, Any]]:
        """The JSON events of a streamed answer. Refusals are retried like any call; once the
        server has answered 200 nothing is, so a generation never runs twice."""
        url = self.config.url(call.path)
        for attempt in range(self.config.max_retries + 1):
            try:
                with self._http.stream(
                    call.method, url, json=call.body, headers=self.config.headers(), timeout=self._timeout(timeout)
                ) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        raise_for_status(resp)
                    yield from _payloads(resp.iter_lines(), url)
                    return
            except (APIError, httpx.TransportError) as exc:
                time.sleep(retry_delay_or_raise(self.config, exc, attempt, url))

    def align(
        self, prompt: str | None = None, *, timeout: Timeout | None = None, **params: Unpack[AlignParams]
    ) -> AlignResponse:
        """Sample ``budget`` candidates and return the one chosen by ``algorithm``."""
        return self._send(calls.align(prompt, params), timeout)

    def chat(
        self, messages: MessagesLike, *, timeout: Timeout | None = None, **params: Unpack[ChatParams]
    ) -> ChatCompletion:
        """OpenAI-style chat completion with optional alignment (``best_of`` = the budget)."""
        return self._send(calls.chat(messages, params), timeout)

    def chat_stream(
        self, messages: MessagesLike, *, timeout: Timeout | None = None, **params: Unpack[ChatParams]
    ) -> Iterator[ChatCompletionChunk]:
        """:meth:`chat`, streamed: plain generation token by token; an aligned answer word by
        word once it is chosen (selection needs all N candidates)."""
        for event in self._events(calls.chat(messages, params, stream=True), timeout):
            yield ChatCompletionChunk.model_validate(event)

    def rewards(self, model: str | None = None, *, timeout: Timeout | None = None) -> RewardsList:
        """What can be weighted for ``model`` (an adapter's own rewards); None: the default model."""
        return self._send(calls.rewards(model), timeout)

    def models(self, *, timeout: Timeout | None = None) -> ModelList:
        """The models this key may call: the base, then the adapters served on it."""
        return self._send(calls.MODELS, timeout)

    def load_adapter(self, name: str, path: str, *, timeout: Timeout | None = None) -> ModelInfo:
        """Serve an IAMA adapter (a directory on the server) as model ``name`` from now on (admin keys)."""
        return self._send(calls.load_adapter(name, path), timeout)

    def unload_adapter(self, name: str, *, timeout: Timeout | None = None) -> AdapterDeleted:
        """Stop routing requests to adapter ``name`` (admin keys); running requests finish."""
        return self._send(calls.unload_adapter(name), timeout)

    def usage(
        self,
        *,
        key: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        group_by: UsageGroup | None = None,
        timeout: Timeout | None = None,
    ) -> UsageReport:
        """Summed usage rows (admin keys): ``since`` inclusive, ``until`` exclusive, both with a zone."""
        return self._send(calls.usage(key, since, until, group_by), timeout)

    def health(self, *, timeout: Timeout | None = None) -> Health:
        """Never raises for 503: a starting server is a normal answer here."""
        url = self.config.url("/health")
        try:
            return Health.model_validate(self._http.get(url, timeout=self._timeout(timeout)).json())
        except httpx.TransportError as exc:
            raise APIConnectionError(f"could not reach {url}: {exc}") from exc

    def wait_until_ready(self, timeout: float = 300.0, interval: float = 1.0) -> Health:
        deadline = time.monotonic() + timeout
        while True:
            try:
                h = self.health()
                if h.ready:
                    return h
            except APIConnectionError:
                pass
            if time.monotonic() > deadline:
                raise APITimeoutError(f"server not ready after {timeout} s")
            time.sleep(interval)


class AsyncClient:
    """Asynchronous twin of :class:`Client` (same arguments, ``await`` the methods)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: Timeout = 120.0,
        connect_timeout: float = 10.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = ClientConfig(base_url, api_key, timeout, connect_timeout, max_retries, backoff, max_backoff)
        self._http = http_client or httpx.AsyncClient(timeout=self.config.timeout)
        self._owns_http = http_client is None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    def _timeout(self, timeout: Timeout | None) -> httpx.Timeout:
        return self.config.timeout if timeout is None else as_timeout(timeout, self.config.connect_timeout)

    async def _send(self, call: Call[R], timeout: Timeout | None = None) -> R:
        url = self.config.url(call.path)
        for attempt in range(self.config.max_retries + 1):
            try:
                resp = await self._http.request(
                    call.method,
                    url,
                    json=call.body,
                    params=call.params,
                    headers=self.config.headers(),
                    timeout=self._timeout(timeout),
                )
                raise_for_status(resp)
                return call.response.model_validate(resp.json())
            except (APIError, httpx.TransportError) as exc:
                await asyncio.sleep(retry_delay_or_raise(self.config, exc, attempt, url))
        raise AssertionError("unreachable")

    async def _events(self, call: Call[Any], timeout: Timeout | None) -> AsyncIterator[dict[str, Any]]:
        url = self.config.url(call.path)
        for attempt in range(self.config.max_retries + 1):
            try:
                async with self._http.stream(
                    call.method, url, json=call.body, headers=self.config.headers(), timeout=self._timeout(timeout)
                ) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        raise_for_status(resp)
                    try:
                        async for line in resp.aiter_lines():
                            payload = sse_payload(line)
                            if payload is DONE:
                                return
                            if payload is not None:
                                yield payload
                    except httpx.TransportError as exc:  # mid-stream: never retried
                        raise APIConnectionError(f"the stream from {url} broke off: {exc}") from exc
                    return
            except (APIError, httpx.TransportError) as exc:
                await asyncio.sleep(retry_delay_or_raise(self.config, exc, attempt, url))

    async def align(
        self, prompt: str | None = None, *, timeout: Timeout | None = None, **params: Unpack[AlignParams]
    ) -> AlignResponse:
        """See :meth:`Client.align`."""
        return await self._send(calls.align(prompt, params), timeout)

    async def chat(
        self, messages: MessagesLike, *, timeout: Timeout | None = None, **params: Unpack[ChatParams]
    ) -> ChatCompletion:
        """See :meth:`Client.chat`."""
        return await self._send(calls.chat(messages, params), timeout)

    async def chat_stream(
        self, messages: MessagesLike, *, timeout: Timeout | None = None, **params: Unpack[ChatParams]
    ) -> AsyncIterator[ChatCompletionChunk]:
        """See :meth:`Client.chat_stream`."""
        async for event in self._events(calls.chat(messages, params, stream=True), timeout):
            yield ChatCompletionChunk.model_validate(event)

    async def rewards(self, model: str | None = None, *, timeout: Timeout | None = None) -> RewardsList:
        """What can be weighted for ``model`` (an adapter's own rewards); None: the default model."""
        return await self._send(calls.rewards(model), timeout)

    async def models(self, *, timeout: Timeout | None = None) -> ModelList:
        """The models this key may call: the base, then the adapters served on it."""
        return await self._send(calls.MODELS, timeout)

    async def load_adapter(self, name: str, path: str, *, timeout: Timeout | None = None) -> ModelInfo:
        """Serve an IAMA adapter (a directory on the server) as model ``name`` from now on (admin keys)."""
        return await self._send(calls.load_adapter(name, path), timeout)

    async def unload_adapter(self, name: str, *, timeout: Timeout | None = None) -> AdapterDeleted:
        """Stop routing requests to adapter ``name`` (admin keys); running requests finish."""
        return await self._send(calls.unload_adapter(name), timeout)

    async def usage(
        self,
        *,
        key: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        group_by: UsageGroup | None = None,
        timeout: Timeout | None = None,
    ) -> UsageReport:
        """Summed usage rows (admin keys): ``since`` inclusive, ``until`` exclusive, both with a zone."""
        return await self._send(calls.usage(key, since, until, group_by), timeout)

    async def health(self, *, timeout: Timeout | None = None) -> Health:
        url = self.config.url("/health")
        try:
            return Health.model_validate((await self._http.get(url, timeout=self._timeout(timeout))).json())
        except httpx.TransportError as exc:
            raise APIConnectionError(f"could not reach {url}: {exc}") from exc

    async def wait_until_ready(self, timeout: float = 300.0, interval: float = 1.0) -> Health:
        """See :meth:`Client.wait_until_ready`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                h = await self.health()
                if h.ready:
                    return h
            except APIConnectionError:
                pass
            if time.monotonic() > deadline:
                raise APITimeoutError(f"server not ready after {timeout} s")
            await asyncio.sleep(interval)


def _payloads(lines: Iterator[str], url: str) -> Iterator[dict[str, Any]]:
    try:
        for line in lines:
            payload = sse_payload(line)
            if payload is DONE:
                return
            if payload is not None:
                yield payload
    except httpx.TransportError as exc:  # mid-stream: never retried
        raise APIConnectionError(f"the stream from {url} broke off: {exc}") from exc
