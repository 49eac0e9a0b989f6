"""Exceptions, in openai-python's shallow hierarchy, carrying the server's message and field.

    IAMAError
    └── APIError                    message, param, code, body
        ├── APIConnectionError      the server was not reached, or did not answer
        │   └── APITimeoutError
        └── APIStatusError          the server answered 4xx/5xx: status_code, retry_after
            ├── BadRequestError (400, 422), AuthenticationError (401), PermissionDeniedError (403),
            │   NotFoundError (404), RequestTooLargeError (413), RateLimitError (429)
            └── InternalServerError (5xx)
                ├── ServiceUnavailableError (503)
                └── ServerTimeoutError (504)

``code`` is one of :data:`ERROR_CODES`, spelt as the server spells it
(``iama_server.errors.ErrorCode``; a test pins the two equal).
"""

from __future__ import annotations

from typing import Any

ERROR_CODES = (
    "invalid_json",
    "invalid_value",
    "invalid_reward_weights",
    "prompt_too_long",
    "request_too_large",
    "unsupported_parameter",
    "invalid_api_key",
    "model_not_found",
    "not_found",
    "method_not_allowed",
    "overloaded",
    "not_ready",
    "timeout",
    "upstream_error",
    "model_not_allowed",
    "key_limit",
    "admin_only",
    "rate_limit_tokens_per_minute",
    "rate_limit_tokens_per_day",
    "rate_limit_concurrency",
    "internal_error",
)


class IAMAError(Exception):
    """Base of everything this client raises."""


class APIError(IAMAError):
    """A request failed; ``param`` names the offending field when the server said which."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message + (f" (field: {param})" if param else ""))
        self.message = message
        self.param = param
        self.code = code
        self.body = body or {}


class APIConnectionError(APIError):
    """The server could not be reached, or the connection broke (after retries)."""


class APITimeoutError(APIConnectionError):
    """The request timed out on the client side."""


class APIStatusError(APIError):
    """The server answered with a 4xx or 5xx status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        param: str | None = None,
        code: str | None = None,
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status_code}: {message}", param=param, code=code, body=body)
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after


class BadRequestError(APIStatusError):
    """400/422: invalid input; ``param`` names the field (e.g. ``reward_weights.foo``)."""


class AuthenticationError(APIStatusError):
    """401: missing or wrong API key."""


class PermissionDeniedError(APIStatusError):
    """403: this key may not: over a limit of its policy (``code`` ``key_limit``, ``param`` the
    field), a model it may not call (``model_not_allowed``), or an admin route (``admin_only``)."""


class NotFoundError(APIStatusError):
    """404: unknown route or model."""


class RequestTooLargeError(APIStatusError):
    """413: the request body is over the server's limit."""


class RateLimitError(APIStatusError):
    """429: the server is at capacity, or the key's tokens per minute/day or concurrency are
    used up for now (``code`` names which); ``retry_after`` says when to come back."""


class InternalServerError(APIStatusError):
    """5xx."""


class ServiceUnavailableError(InternalServerError):
    """503: the engine is still starting, or is going away."""


class ServerTimeoutError(InternalServerError):
    """504: the request exceeded the server's timeout."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: RequestTooLargeError,
    422: BadRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
    504: ServerTimeoutError,
}


def error_class_for_status(status: int) -> type[APIStatusError]:
    return _BY_STATUS.get(status, InternalServerError if status >= 500 else APIStatusError)
