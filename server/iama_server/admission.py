"""Admission and the life of an admitted request: capacity, timeout, client disconnect.

At most ``max_active`` requests generate and ``max_queued`` more wait; anything beyond is
refused at once with 429 + Retry-After, so overload degrades into fast, retryable answers
instead of unbounded queues, timeouts or memory growth. A request that was admitted is never
dropped: it waits for its slot. Once running, it is cancelled (which aborts its vLLM request,
see ``engine.py``) when the client goes away or the server's timeout passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from iama_server.errors import APIError, ClientGone, ErrorCode

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
T = TypeVar("T")


class Admission:
    def __init__(self, max_active: int, max_queued: int, retry_after_s: int) -> None:
        self.max_active = max_active
        self.max_queued = max_queued
        self.retry_after_s = retry_after_s
        self._sem = asyncio.Semaphore(max_active)
        self.active = 0
        self.waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Yields the seconds spent queued."""
        if self.active + self.waiting >= self.max_active + self.max_queued:
            raise APIError(
                429,
                f"server is at capacity ({self.max_active} running, {self.waiting} queued); retry later",
                code=ErrorCode.OVERLOADED,
                headers={"Retry-After": str(self.retry_after_s)},
            )
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            yield loop.time() - t0
        finally:
            self.active -= 1
            self._sem.release()


async def _disconnected(receive: Receive) -> None:
    """Return when the ASGI client disconnects (the body has already been read)."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


async def cancel_on_disconnect_or_timeout(coro: Coroutine[Any, Any, T], receive: Receive, timeout_s: float) -> T:
    """Run ``coro``, cancelling it (and so its vLLM request) if the client disconnects
    (:class:`ClientGone`) or ``timeout_s`` passes (504)."""
    task = asyncio.ensure_future(coro)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    if watcher in done:
        raise ClientGone()
    raise APIError(504, f"request exceeded the server's {timeout_s:g} s timeout", code=ErrorCode.TIMEOUT)
