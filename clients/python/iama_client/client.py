"""The synchronous and asynchronous clients; both share ``_base`` and differ only in I/O."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from iama_client._base import ClientConfig, drop_none, messages_payload, raise_for_error, retry_delay_or_raise
from iama_client.errors import APIConnectionError, APIError, APITimeoutError
from iama_client.models import (
    Algorithm,
    AlignResponse,
    ChatCompletion,
    Health,
    MessagesLike,
    ModelList,
    RewardsList,
)


def _align_body(
    prompt: str | None,
    messages: MessagesLike | None,
    reward_weights: dict[str, float] | None,
    budget: int | None,
    algorithm: Algorithm,
    alignment_temperature: float | None,
    temperature: float | None,
    top_p: float | None,
    max_tokens: int | None,
    seed: int | None,
    stop: str | list[str] | None,
    return_candidates: bool,
    normalize: bool | None,
    raw_prompt: bool | None,
) -> dict[str, Any]:
    return drop_none(
        {
            "prompt": prompt,
            "messages": messages_payload(messages),
            "reward_weights": reward_weights,
            "budget": budget,
            "algorithm": algorithm,
            "alignment_temperature": alignment_temperature,
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
            "seed": seed,
            "stop": stop,
            "return_candidates": return_candidates,
            "normalize": normalize,
            "raw_prompt": raw_prompt,
        }
    )


def _chat_body(
    messages: MessagesLike,
    model: str | None,
    reward_weights: dict[str, float] | None,
    best_of: int | None,
    alignment: Algorithm,
    alignment_temperature: float | None,
    n: int,
    temperature: float | None,
    top_p: float | None,
    max_tokens: int | None,
    seed: int | None,
    stop: str | list[str] | None,
) -> dict[str, Any]:
    return drop_none(
        {
            "model": model,
            "messages": messages_payload(messages),
            "reward_weights": reward_weights,
            "best_of": best_of,
            "alignment": alignment,
            "alignment_temperature": alignment_temperature,
            "n": n,
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
            "seed": seed,
            "stop": stop,
        }
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

    def _request(self, method: str, path: str, json: dict[str, Any] | None = None) -> httpx.Response:
        url = self.config.base_url + path
        for attempt in range(self.config.max_retries + 1):
            try:
                resp = self._http.request(method, url, json=json, headers=self.config.headers())
                raise_for_error(resp)
                return resp
            except (APIError, httpx.TransportError) as exc:
                time.sleep(retry_delay_or_raise(self.config, exc, attempt, url))
        raise AssertionError("unreachable")

    def align(
        self,
        prompt: str | None = None,
        *,
        messages: MessagesLike | None = None,
        reward_weights: dict[str, float] | None = None,
        budget: int | None = None,
        algorithm: Algorithm = "bon",
        alignment_temperature: float | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        return_candidates: bool = False,
        normalize: bool | None = None,
        raw_prompt: bool | None = None,
    ) -> AlignResponse:
        """Sample ``budget`` candidates and return the one chosen by ``algorithm``."""
        body = _align_body(
            prompt,
            messages,
            reward_weights,
            budget,
            algorithm,
            alignment_temperature,
            temperature,
            top_p,
            max_tokens,
            seed,
            stop,
            return_candidates,
            normalize,
            raw_prompt,
        )
        return AlignResponse.model_validate(self._request("POST", "/v1/align", body).json())

    def chat(
        self,
        messages: MessagesLike,
        *,
        model: str | None = None,
        reward_weights: dict[str, float] | None = None,
        best_of: int | None = None,
        alignment: Algorithm = "bon",
        alignment_temperature: float | None = None,
        n: int = 1,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        stop: str | list[str] | None = None,
    ) -> ChatCompletion:
        """OpenAI-style chat completion with optional alignment (``best_of`` = the budget)."""
        body = _chat_body(
            messages,
            model,
            reward_weights,
            best_of,
            alignment,
            alignment_temperature,
            n,
            temperature,
            top_p,
            max_tokens,
            seed,
            stop,
        )
        return ChatCompletion.model_validate(self._request("POST", "/v1/chat/completions", body).json())

    def rewards(self) -> RewardsList:
        return RewardsList.model_validate(self._request("GET", "/v1/rewards").json())

    def models(self) -> ModelList:
        return ModelList.model_validate(self._request("GET", "/v1/models").json())

    def health(self) -> Health:
        """Never raises for 503: a starting server is a normal answer here."""
        url = self.config.base_url + "/health"
        try:
            resp = self._http.get(url)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"could not reach {url}: {exc}") from exc
        return Health.model_validate(resp.json())

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

    async def _request(self, method: str, path: str, json: dict[str, Any] | None = None) -> httpx.Response:
        url = self.config.base_url + path
        for attempt in range(self.config.max_retries + 1):
            try:
                resp = await self._http.request(method, url, json=json, headers=self.config.headers())
                raise_for_error(resp)
                return resp
            except (APIError, httpx.TransportError) as exc:
                await asyncio.sleep(retry_delay_or_raise(self.config, exc, attempt, url))
        raise AssertionError("unreachable")

    async def align(
        self,
        prompt: str | None = None,
        *,
        messages: MessagesLike | None = None,
        reward_weights: dict[str, float] | None = None,
        budget: int | None = None,
        algorithm: Algorithm = "bon",
        alignment_temperature: float | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        return_candidates: bool = False,
        normalize: bool | None = None,
        raw_prompt: bool | None = None,
    ) -> AlignResponse:
        """See :meth:`Client.align`."""
        body = _align_body(
            prompt,
            messages,
            reward_weights,
            budget,
            algorithm,
            alignment_temperature,
            temperature,
            top_p,
            max_tokens,
            seed,
            stop,
            return_candidates,
            normalize,
            raw_prompt,
        )
        return AlignResponse.model_validate((await self._request("POST", "/v1/align", body)).json())

    async def chat(
        self,
        messages: MessagesLike,
        *,
        model: str | None = None,
        reward_weights: dict[str, float] | None = None,
        best_of: int | None = None,
        alignment: Algorithm = "bon",
        alignment_temperature: float | None = None,
        n: int = 1,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        stop: str | list[str] | None = None,
    ) -> ChatCompletion:
        """See :meth:`Client.chat`."""
        body = _chat_body(
            messages,
            model,
            reward_weights,
            best_of,
            alignment,
            alignment_temperature,
            n,
            temperature,
            top_p,
            max_tokens,
            seed,
            stop,
        )
        return ChatCompletion.model_validate((await self._request("POST", "/v1/chat/completions", body)).json())

    async def rewards(self) -> RewardsList:
        return RewardsList.model_validate((await self._request("GET", "/v1/rewards")).json())

    async def models(self) -> ModelList:
        return ModelList.model_validate((await self._request("GET", "/v1/models")).json())

    async def health(self) -> Health:
        url = self.config.base_url + "/health"
        try:
            resp = await self._http.get(url)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"could not reach {url}: {exc}") from exc
        return Health.model_validate(resp.json())
