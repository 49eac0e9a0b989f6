"""Every failure leaves as an OpenAI-style JSON error naming the offending field; never a trace.

Code below the routes raises :class:`APIError` (or lets pydantic reject the body);
:func:`install_error_handlers` turns failures into responses, and :func:`error_body` is the one
place that builds an error's JSON, for a response, a stream's error event and the Ray ingress
alike. One rule per status: its ``type`` (:func:`error_type`) and, unless the raiser names one,
its ``code``. ``code`` is a closed set (:class:`ErrorCode`), which the client SDK mirrors, so
both spell each one alike.
"""

from __future__ import annotations

import json
import logging
import re
from enum import StrEnum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from iama_server.schemas.errors import ErrorBody, ErrorResponse

log = logging.getLogger("iama.server")


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_VALUE = "invalid_value"  # a body field failed validation; ``param`` names it
    INVALID_REWARD_WEIGHTS = "invalid_reward_weights"
    PROMPT_TOO_LONG = "prompt_too_long"
    REQUEST_TOO_LARGE = "request_too_large"
    UNSUPPORTED_PARAMETER = "unsupported_parameter"  # an OpenAI field this server does not implement
    INVALID_API_KEY = "invalid_api_key"
    MODEL_NOT_FOUND = "model_not_found"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    OVERLOADED = "overloaded"
    NOT_READY = "not_ready"
    TIMEOUT = "timeout"
    UPSTREAM_ERROR = "upstream_error"  # a remote reward's or judge's server failed
    # A key's policy (keys.py): a request it may never make (403), or a window or its
    # concurrency full for now (429 with Retry-After; limits.py).
    MODEL_NOT_ALLOWED = "model_not_allowed"
    KEY_LIMIT = "key_limit"
    ADMIN_ONLY = "admin_only"
    TOKENS_PER_MINUTE = "rate_limit_tokens_per_minute"
    TOKENS_PER_DAY = "rate_limit_tokens_per_day"
    CONCURRENCY = "rate_limit_concurrency"
    INTERNAL_ERROR = "internal_error"


_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout_error",
}
_DEFAULT_CODES = {
    400: ErrorCode.INVALID_VALUE,
    401: ErrorCode.INVALID_API_KEY,
    403: ErrorCode.KEY_LIMIT,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.REQUEST_TOO_LARGE,
    429: ErrorCode.OVERLOADED,
    502: ErrorCode.UPSTREAM_ERROR,
    503: ErrorCode.NOT_READY,
    504: ErrorCode.TIMEOUT,
}


def error_type(status: int) -> str:
    """OpenAI's ``error.type`` for a status code (also the label of ``iama_errors_total``)."""
    return _TYPES.get(status, "api_error")


def error_body(status: int, message: str, param: str | None = None, code: ErrorCode | None = None) -> dict[str, Any]:
    """``{"error": {message, type, param, code}}``: the type is the status's, the code the one
    given or the status's usual one."""
    code = code or _DEFAULT_CODES.get(status, ErrorCode.INTERNAL_ERROR)
    body = ErrorBody(message=message, type=error_type(status), param=param, code=str(code))
    return ErrorResponse(error=body).model_dump()


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: ErrorCode | None = None,  # default: the usual code of ``status``
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class ClientGone(Exception):
    """The client disconnected; its vLLM request was aborted and nobody reads the answer."""


# pydantic names the member of a union or a validator in an error's location (``budget.
# constrained-int``, ``messages.0.content.function-before[...]``); the field is what matters.
_TYPE_TAG = re.compile(
    r"^((constrained|lax|strict)-)?(int|float|str|bool|bytes|dict|list|tuple|set|none|decimal)$|\[|^(literal|union)"
)


def _loc_to_param(loc: tuple[object, ...]) -> str | None:
    parts = [str(p) for p in (loc[1:] if loc[:1] in (("body",), ("query",), ("path",)) else loc)]
    return ".".join(p for p in parts if not _TYPE_TAG.search(p)) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(ClientGone)
    async def _client_gone(_: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "value_error"}
        if first.get("type") == "json_invalid":
            return APIError(400, "request body is not valid JSON", None, ErrorCode.INVALID_JSON).response()
        param = _loc_to_param(tuple(first.get("loc", ())))
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        if param:
            msg = f"{param}: {msg}"
        if len(errors) > 1:
            msg += f" (and {len(errors) - 1} more error(s))"
        kind = str(first.get("type"))
        code = ErrorCode(kind) if kind in ErrorCode._value2member_map_ else ErrorCode.INVALID_VALUE
        return APIError(400, msg, param, code).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        headers = dict(exc.headers or {})
        return APIError(exc.status_code, detail, headers=headers).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")  # the trace stays in the server log
        return APIError(500, "internal server error", code=ErrorCode.INTERNAL_ERROR).response()
