"""Admission control: at most ``max_active`` requests generate, ``max_queued`` more wait.

Anything beyond is refused at once with 429 + Retry-After, so overload degrades into fast,
retryable answers instead of unbounded queues, timeouts or memory growth. A request that was
admitted is never dropped: it waits for its slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from iama_server.errors import APIError


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
                code="overloaded",
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
