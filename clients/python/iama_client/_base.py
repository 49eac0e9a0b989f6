"""Configuration, request building, retry policy and error mapping shared by both clients."""

from __future__ import annotations

import os
import random
from typing import Any

import httpx

from iama_client.errors import APIConnectionError, APIError, APITimeoutError, error_for
from iama_client.models import ChatMessage, MessagesLike

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = {429, 503}


class ClientConfig:
    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        backoff: float,
        max_backoff: float,
    ) -> None:
        self.base_url = (base_url or os.environ.get("IAMA_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("IAMA_API_KEY")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff

    def headers(self) -> dict[str, str]:
        h = {"User-Agent": "iama-client/0.1.0"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Honour Retry-After when the server gives one, else exponential backoff with jitter."""
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        base = min(self.backoff * (2**attempt), self.max_backoff)
        return base * (0.5 + random.random() / 2)


def retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def raise_for_error(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
    except ValueError:
        body = {}
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message, param, code = str(err.get("message", resp.reason_phrase)), err.get("param"), err.get("code")
    else:
        message, param, code = resp.text or resp.reason_phrase, None, None
    cls = error_for(resp.status_code)
    raise cls(message, resp.status_code, param, code, body if isinstance(body, dict) else {}, retry_after(resp))


def should_retry(exc: Exception) -> bool:
    """429/503 are refusals before any work; connect errors never reached the server."""
    if isinstance(exc, APIError):
        return exc.status_code in RETRY_STATUSES
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))


def retry_delay_or_raise(config: ClientConfig, exc: Exception, attempt: int, url: str) -> float:
    """Seconds to wait before the next attempt, or raise the exception the caller should see."""
    if attempt < config.max_retries and should_retry(exc):
        return config.delay(attempt, getattr(exc, "retry_after", None))
    if isinstance(exc, httpx.TimeoutException):
        raise APITimeoutError(f"request to {url} timed out") from exc
    if isinstance(exc, httpx.TransportError):
        raise APIConnectionError(f"could not reach {url}: {exc}") from exc
    raise exc


def messages_payload(messages: MessagesLike | None) -> list[dict[str, str]] | None:
    if messages is None:
        return None
    return [m.model_dump() if isinstance(m, ChatMessage) else dict(m) for m in messages]


def drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}
