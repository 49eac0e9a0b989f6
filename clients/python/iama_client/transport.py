"""What both clients share about sending a request: configuration, headers, the retry policy,
and turning a response into a model or an exception. No I/O here."""

from __future__ import annotations

import json
import os
import random
from typing import Any

import httpx

from iama_client.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    error_class_for_status,
)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 503})


Timeout = float | httpx.Timeout


def as_timeout(timeout: Timeout, connect: float) -> httpx.Timeout:
    """A read timeout for the whole answer (best-of-N takes a while) and a short connect one,
    so that a server that is down is noticed in seconds, not after the read timeout."""
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout, connect=connect)


class ClientConfig:
    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        timeout: Timeout,
        connect_timeout: float,
        max_retries: int,
        backoff: float,
        max_backoff: float,
    ) -> None:
        base = (base_url or os.environ.get("IAMA_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        # Paths already start with /v1; accept the OpenAI-style base URL too.
        self.base_url = base.removesuffix("/v1")
        self.api_key = api_key if api_key is not None else os.environ.get("IAMA_API_KEY")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.connect_timeout = connect_timeout
        self.timeout = as_timeout(timeout, connect_timeout)
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff

    def headers(self) -> dict[str, str]:
        h = {"User-Agent": "iama-client/0.1.0"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def url(self, path: str) -> str:
        return self.base_url + path

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Honour Retry-After when the server gives one, else exponential backoff with jitter."""
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        base = min(self.backoff * (2**attempt), self.max_backoff)
        return base * (0.5 + random.random() / 2)


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def raise_for_status(resp: httpx.Response) -> None:
    """An :class:`APIStatusError` subclass for a 4xx/5xx answer, whatever its body: the server's
    JSON error, or anything else (a proxy's HTML page) as plain text."""
    if resp.status_code < 400:
        return
    body: Any
    try:
        body = resp.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message, param, code = str(err.get("message") or resp.reason_phrase), err.get("param"), err.get("code")
    else:
        message, param, code = (resp.text.strip()[:500] or resp.reason_phrase), None, None
    raise error_class_for_status(resp.status_code)(
        message,
        status_code=resp.status_code,
        param=param,
        code=code,
        body=body if isinstance(body, dict) else {},
        retry_after=_retry_after(resp),
    )


def should_retry(exc: Exception) -> bool:
    """429/503 are refusals before any work; connect errors never reached the server. Nothing
    else is retried, so a request is never run twice."""
    if isinstance(exc, APIStatusError):
        return exc.status_code in RETRY_STATUSES
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))


def retry_delay_or_raise(config: ClientConfig, exc: Exception, attempt: int, url: str) -> float:
    """Seconds to wait before the next attempt, or raise the exception the caller should see."""
    if attempt < config.max_retries and should_retry(exc):
        return config.delay(attempt, getattr(exc, "retry_after", None))
    if isinstance(exc, APIError):
        raise exc
    if isinstance(exc, httpx.TimeoutException):
        raise APITimeoutError(f"request to {url} timed out") from exc
    raise APIConnectionError(f"could not reach {url}: {exc}") from exc


DONE: dict[str, Any] = {}  # sse_payload's "the stream is over" (``data: [DONE]``)


def sse_payload(line: str) -> dict[str, Any] | None:
    """One line of a server-sent event stream: its JSON payload, :data:`DONE` at ``[DONE]``,
    ``None`` for anything else; an error event (a timeout mid-stream) raises ``APIError``."""
    if not line.startswith("data: "):
        return None
    data = line[6:].strip()
    if data == "[DONE]":
        return DONE
    payload = json.loads(data)
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        err = payload["error"]
        raise APIError(str(err.get("message")), param=err.get("param"), code=err.get("code"), body=payload)
    return payload if isinstance(payload, dict) else None
