"""Admission and the life of an admitted request: capacity, timeout, client disconnect.

Capacity is counted in what a request costs the engine, not in requests: its tokens of KV
cache at most, ``prompt tokens + N × max_tokens`` per prompt (``request_cost``), so 16 prompts
× budget 256 × 2,048 tokens weigh what they are, and "Hi" × 1 next to nothing. A request runs
when at most ``max_active`` others run and its cost fits in what ``token_capacity`` has left;
otherwise it waits: by its key's priority class, first come first served within a class (a
large request is not overtaken forever by small ones), and a request that has waited
``priority_aging_s`` goes before any class, so none starves (``_Turn.rank``). At most
``max_queued`` wait: anything beyond is refused at once with 429 +
Retry-After, so overload degrades into fast, retryable answers instead of unbounded queues,
timeouts or memory growth. A request that costs more than the whole capacity is a 400 before it
gets here (``calls.py`` names the field). A request that was admitted is never dropped: it waits
for its turn. Once running, it is cancelled (which aborts its vLLM request, see ``vllm_engine.py``)
when the client goes away or the server's timeout passes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import Gauge

from iama_server.errors import APIError, ClientGone, ErrorCode

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
T = TypeVar("T")


def request_cost(prompt_tokens: int, candidates: int, max_tokens: int) -> int:
    """What one prompt's request can hold of the engine's KV cache: its prompt (computed once
    for all candidates) and every candidate run to ``max_tokens``."""
    return prompt_tokens + candidates * max_tokens


@dataclass(frozen=True, eq=False)
class _Turn:
    """A waiting request's place: its class, when it came, and the order it came in."""

    priority: int
    since: float
    arrival: int

    def rank(self, now: float, aging_s: float) -> tuple[int, int]:
        """Strict priority between classes, first come first served within one; a request that
        has waited ``aging_s`` ranks with the highest class (by its arrival), so a stream of
        high-priority requests delays a low one by at most that long before it is next."""
        if now - self.since >= aging_s:
            return (-1, self.arrival)
        return (self.priority, self.arrival)


class Admission:
    def __init__(
        self,
        max_active: int,
        max_queued: int,
        retry_after_s: int,
        token_capacity: int,
        priority_aging_s: float = 30.0,
    ) -> None:
        self.max_active = max_active
        self.max_queued = max_queued
        self.retry_after_s = retry_after_s
        self.token_capacity = token_capacity
        self.priority_aging_s = priority_aging_s
        self.active = 0
        self.waiting = 0
        self.tokens_in_use = 0  # the cost of the running requests
        self._turns: list[_Turn] = []  # waiting requests; the next is the least _Turn.rank
        self._arrivals = itertools.count()
        self._changed = asyncio.Condition()

    def export(self, queue_depth: Gauge, in_flight: Gauge, tokens_in_use: Gauge) -> None:
        """Report the queue, the running requests and the tokens they hold through these gauges,
        read live at every scrape."""
        queue_depth.set_function(lambda: self.waiting)
        in_flight.set_function(lambda: self.active)
        tokens_in_use.set_function(lambda: self.tokens_in_use)

    def _next(self) -> _Turn:
        now = asyncio.get_running_loop().time()
        return min(self._turns, key=lambda t: t.rank(now, self.priority_aging_s))

    def _my_turn(self, turn: _Turn, cost: int) -> bool:
        return (
            self._next() is turn and self.active < self.max_active and self.tokens_in_use + cost <= self.token_capacity
        )

    @asynccontextmanager
    async def slot(self, cost: int = 0, priority: int = 1) -> AsyncIterator[float]:
        """Yields the seconds spent queued; ``cost`` (``request_cost``) is held while inside.
        ``priority``: the key's class (0 first, as vLLM's ``priority``)."""
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
        ticket = _Turn(priority, t0, next(self._arrivals))
        self._turns.append(ticket)
        self.waiting += 1
        try:
            async with self._changed:
                await self._changed.wait_for(lambda: self._my_turn(ticket, cost))
                self._turns.remove(ticket)
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
