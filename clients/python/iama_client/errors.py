"""Exceptions carrying the server's message and offending field (``param``)."""

from __future__ import annotations

from typing import Any


class IAMAError(Exception):
    """Base of everything this client raises."""


class APIConnectionError(IAMAError):
    """The server could not be reached (after retries)."""


class APITimeoutError(APIConnectionError):
    """The request timed out on the client side."""


class APIError(IAMAError):
    """The server answered with an error status."""

    def __init__(
        self,
        message: str,
        status_code: int,
        param: str | None = None,
        code: str | None = None,
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status_code}: {message}" + (f" (field: {param})" if param else ""))
        self.message = message
        self.status_code = status_code
        self.param = param
        self.field = param
        self.code = code
        self.body = body or {}
        self.retry_after = retry_after


class BadRequestError(APIError):
    """400/422: invalid input; ``param`` names the field (e.g. ``reward_weights.foo``)."""


class AuthenticationError(APIError):
    """401: missing or wrong API key."""


class NotFoundError(APIError):
    """404: unknown route or model."""


class RateLimitError(APIError):
    """429: the server is at capacity; ``retry_after`` says when to come back."""


class ServiceUnavailableError(APIError):
    """503: the engine is still starting (or failed to start)."""


class ServerTimeoutError(APIError):
    """504: the request exceeded the server's timeout."""


class InternalServerError(APIError):
    """500 and other 5xx."""


def error_for(status: int) -> type:
    return {
        400: BadRequestError,
        401: AuthenticationError,
        403: AuthenticationError,
        404: NotFoundError,
        422: BadRequestError,
        429: RateLimitError,
        503: ServiceUnavailableError,
        504: ServerTimeoutError,
    }.get(status, InternalServerError if status >= 500 else APIError)
