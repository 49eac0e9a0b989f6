"""A cap on request bodies, enforced before anything parses them.

FastAPI reads and parses a JSON body in full before any validation, so without a cap a 20 MB
body costs 20 MB of memory and a full parse per request. This pure ASGI middleware refuses a
body whose ``Content-Length`` is over the limit at once, and counts the bytes of a streamed
(chunked) body as they arrive, stopping the request the moment it passes the limit. Either way
the answer is a 413 in OpenAI's error shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import HTTPException

from iama_server.errors import APIError, ErrorCode

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"request body is larger than the server's limit of {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await APIError(413, self._message(), code=ErrorCode.REQUEST_TOO_LARGE).response()(scope, receive, send)
            return
        seen = 0

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI re-raises an HTTPException met while reading a body (other errors
                    # become a 400), so the app's error handlers answer 413 in OpenAI's shape.
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, counted_receive, send)
