"""Admission and the life of an admitted request: capacity, timeout, client disconnect.

Capacity is counted in what a request costs the engine, not in requests: its tokens of KV
cache at most, ``prompt tokens + N × max_tokens`` per prompt (``request_cost``), so 16 prompts
× budget 256 × 2,048 tokens weigh what they are, and "Hi" × 1 next to nothing. A request runs
when at most ``max_active`` others run and its cost fits in what ``token_capacity`` has left;
otherwise it waits, first come first served (a large request is not overtaken forever by small
ones), and at most ``max_queued`` wait: anything beyond is refused at once with 429 +
Retry-After, so overload degrades into fast, retryable answers instead of unbounded queues,
timeouts or memory growth. A request that costs more than the whole capacity is a 400 before it
gets here (``calls.py`` names the field). A request that was admitted is never dropped: it waits
for its turn. Once running, it is cancelled (which aborts its vLLM request, see ``vllm_engine.py``)
when the client goes away or the server's timeout passes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from prometheus_client import Gauge

from iama_server.errors import APIError, ClientGone, ErrorCode

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
T = TypeVar("T")


def request_cost(prompt_tokens: int, candidates: int, max_tokens: int) -> int:
    """What one prompt's request can hold of the engine's KV cache: its prompt (computed once
    for all candidates) and every candidate run to ``max_tokens``."""
    return prompt_tokens + candidates * max_tokens


class Admission:
    def __init__(self, max_active: int, max_queued: int, retry_after_s: int, token_capacity: int) -> None:
        self.max_active = max_active
        self.max_queued = max_queued
        self.retry_after_s = retry_after_s
        self.token_capacity = token_capacity
        self.active = 0
        self.waiting = 0
        self.tokens_in_use = 0  # the cost of the running requests
        self._turns: deque[object] = deque()  # waiting requests, first come first served
        self._changed = asyncio.Condition()

    def export(self, queue_depth: Gauge, in_flight: Gauge, tokens_in_use: Gauge) -> None:
        """Report the queue, the running requests and the tokens they hold through these gauges,
        read live at every scrape."""
        queue_depth.set_function(lambda: self.waiting)
        in_flight.set_function(lambda: self.active)
        tokens_in_use.set_function(lambda: self.tokens_in_use)

    def _my_turn(self, ticket: object, cost: int) -> bool:
        return (
            self._turns[0] is ticket
            and self.active < self.max_active
            and self.tokens_in_use + cost <= self.token_capacity
        )

    @asynccontextmanager
    async def slot(self, cost: int = 0) -> AsyncIterator[float]:
        """Yields the seconds spent queued; ``cost`` (``request_cost``) is held while inside."""
        if cost > self.token_capacity:  # calls.py refuses these with a 400 naming the field
            raise ValueError(f"cost {cost} exceeds the whole capacity {self.token_capacity}")
        runs_now = (
            not self._turns and self.active < self.max_active and self.tokens_in_use + cost <= self.token_capacity
        )
        if not runs_now and self.waiting >= self.max_queued:
            raise APIError(
                429,
                f"server is at capacity ({self.active} running, {self.waiting} queued, "
                f"{self.tokens_in_use} of {self.token_capacity} tokens in use); retry later",
                code=ErrorCode.OVERLOADED,
                headers={"Retry-After": str(self.retry_after_s)},
            )
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        ticket = object()
        self._turns.append(ticket)
        self.waiting += 1
        try:
            async with self._changed:
                await self._changed.wait_for(lambda: self._my_turn(ticket, cost))
                self._turns.popleft()
                self.active += 1
                self.tokens_in_use += cost
                self._changed.notify_all()  # the next in line may fit beside this one
        except BaseException:  # cancelled while waiting (client gone): give up the place in line
            if ticket in self._turns:
                self._turns.remove(ticket)
                async with self._changed:
                    self._changed.notify_all()
            raise
        finally:
            self.waiting -= 1
        try:
            yield loop.time() - t0
        finally:
            self.active -= 1
            self.tokens_in_use -= cost
            async with self._changed:
                self._changed.notify_all()


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
