"""The synchronous and asynchronous clients. Each call is defined once in ``calls.py``; the two
classes differ only in how they send it (and wait between retries)."""

from __future__ import annotations

import asyncio
import time

import httpx
from typing_extensions import Unpack

from iama_client import calls
from iama_client.calls import Call, R
from iama_client.errors import APIConnectionError, APIError, APITimeoutError
from iama_client.models import (
    AlignParams,
    AlignResponse,
    ChatCompletion,
    ChatParams,
    Health,
    MessagesLike,
    ModelList,
    RewardsList,
)
from iama_client.transport import ClientConfig, raise_for_status, retry_delay_or_raise


class Client:
    """Synchronous client. Arguments fall back to ``IAMA_BASE_URL`` / ``IAMA_API_KEY``.

    ``max_retries`` retries 429/503 answers (honouring ``Retry-After``) and connection
    failures with exponential backoff; other errors raise at once.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.config = ClientConfig(base_url, api_key, timeout, max_retries, backoff, max_backoff)
        self._http = http_client or httpx.Client(timeout=timeout)
        self._owns_http = http_client is None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def _send(self, call: Call[R]) -> R:
        url = self.config.url(call.path)
        for attempt in range(self.config.max_retries + 1):
            try:
                resp = self._http.request(call.method, url, json=call.body, headers=self.config.headers())
                raise_for_status(resp)
                return call.response.model_validate(resp.json())
            except (APIError, httpx.TransportError) as exc:
                time.sleep(retry_delay_or_raise(self.config, exc, attempt, url))
        raise AssertionError("unreachable")

    def align(self, prompt: str | None = None, **params: Unpack[AlignParams]) -> AlignResponse:
        """Sample ``budget`` candidates and return the one chosen by ``algorithm``."""
        return self._send(calls.align(prompt, params))

    def chat(self, messages: MessagesLike, **params: Unpack[ChatParams]) -> ChatCompletion:
        """OpenAI-style chat completion with optional alignment (``best_of`` = the budget)."""
        return self._send(calls.chat(messages, params))

    def rewards(self) -> RewardsList:
        return self._send(calls.REWARDS)

    def models(self) -> ModelList:
        return self._send(calls.MODELS)

    def health(self) -> Health:
        """Never raises for 503: a starting server is a normal answer here."""
        url = self.config.url("/health")
        try:
            return Health.model_validate(self._http.get(url).json())
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
        timeout: float = 120.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = ClientConfig(base_url, api_key, timeout, max_retries, backoff, max_backoff)
        self._http = http_client or httpx.AsyncClient(timeout=timeout)
        self._owns_http = http_client is None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _send(self, call: Call[R]) -> R:
        url = self.config.url(call.path)
        for attempt in range(self.config.max_retries + 1):
            try:
                resp = await self._http.request(call.method, url, json=call.body, headers=self.config.headers())
                raise_for_status(resp)
                return call.response.model_validate(resp.json())
            except (APIError, httpx.TransportError) as exc:
                await asyncio.sleep(retry_delay_or_raise(self.config, exc, attempt, url))
        raise AssertionError("unreachable")

    async def align(self, prompt: str | None = None, **params: Unpack[AlignParams]) -> AlignResponse:
        """See :meth:`Client.align`."""
        return await self._send(calls.align(prompt, params))

    async def chat(self, messages: MessagesLike, **params: Unpack[ChatParams]) -> ChatCompletion:
        """See :meth:`Client.chat`."""
        return await self._send(calls.chat(messages, params))

    async def rewards(self) -> RewardsList:
        return await self._send(calls.REWARDS)

    async def models(self) -> ModelList:
        return await self._send(calls.MODELS)

    async def health(self) -> Health:
        url = self.config.url("/health")
        try:
            return Health.model_validate((await self._http.get(url)).json())
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
