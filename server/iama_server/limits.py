"""Per-key limits that hold across replicas: tokens a minute, tokens a UTC day, requests at once.

A request is charged its admission cost (``admission.request_cost``: what it may use at most)
when it starts, :meth:`Limiter.acquire`, and refunded down to what it used when it ends,
:meth:`Limiter.release`; so a key cannot start more than its budget allows, and pays in the end
for what it used. A refusal is :class:`LimitExceeded` naming the limit, and :func:`limit_error`
turns it into a 429 with a Retry-After.

Windows are fixed, aligned to the epoch: a minute starts at :00, a day at UTC midnight. A
sliding log would smooth the burst a key can make across a boundary (twice its rate at most),
but costs a log entry per request and a scan per check, a day's worth of them for
``tokens_per_day``; a fixed window is one counter, and its Retry-After is exact: the seconds
until the window in which the request no longer fits ends (refunds may free budget sooner).
A concurrency slot frees when a running request ends, which no one can foresee: its
Retry-After is 1 s.

:class:`LocalLimiter` keeps the counts in this process (one replica). :class:`RedisLimiter`
keeps them in Redis, changed only by Lua scripts (atomic: two replicas never both take the last
slot). Each concurrency lease is a member of a sorted set scored by its expiry time, which the
holder pushes forward every ``lease_ttl_s / 3`` while its request runs; a replica that dies stops
refreshing, and its leases lapse after ``lease_ttl_s``. Times are the replicas' clocks (NTP
keeps them within milliseconds of each other: a window boundary or an expiry moves by the skew).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("iama.server")

LimitName = Literal["tokens_per_minute", "tokens_per_day", "max_concurrent_requests"]
MINUTE_S = 60
DAY_S = 86_400
CONCURRENCY_RETRY_AFTER_S = 1

# The error codes a refusal leaves with (errors.py's ErrorCode has none yet; the wiring adds them).
LIMIT_CODES: dict[LimitName, str] = {
    "tokens_per_minute": "rate_limit_tokens_per_minute",
    "tokens_per_day": "rate_limit_tokens_per_day",
    "max_concurrent_requests": "rate_limit_concurrency",
}


class RateLimits(Protocol):
    """The limits a limiter enforces (``iama_server.keys.Limits`` has them); None is unlimited."""

    @property
    def tokens_per_minute(self) -> int | None: ...

    @property
    def tokens_per_day(self) -> int | None: ...

    @property
    def max_concurrent_requests(self) -> int | None: ...


class LimitExceeded(Exception):
    """A key is over ``limit``. ``retry_after_s``: seconds until the request fits (at least 1),
    or None when it never can (it asks for more than the whole window allows)."""

    def __init__(self, limit: LimitName, retry_after_s: int | None, allowed: int, used: int, requested: int) -> None:
        super().__init__(f"{limit} exceeded: {used} used + {requested} requested > {allowed} allowed")
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.allowed = allowed  # the limit's value
        self.used = used  # tokens charged in the window, or requests running
        self.requested = requested  # this request's cost in tokens, or 1 request


@dataclass(frozen=True)
class Lease:
    """One admitted request's hold: what it was charged, where, and whether it holds a slot."""

    key_name: str
    lease_id: str
    cost_tokens: int
    minute: int | None  # the window its cost was charged to (the refund goes there); None: not charged
    day: int | None
    holds_slot: bool  # counted against max_concurrent_requests


@dataclass(frozen=True)
class Usage:
    """What a key holds when a request asks."""

    minute_tokens: int
    day_tokens: int
    running: int


class Limiter(Protocol):
    async def acquire(self, key_name: str, limits: RateLimits, cost_tokens: int) -> Lease:
        """Charge ``cost_tokens`` to the key's windows and take a slot, or raise :class:`LimitExceeded`."""
        ...

    async def release(self, lease: Lease, actual_tokens: int) -> None:
        """Free the slot and refund ``cost_tokens - actual_tokens``; a second release does nothing."""
        ...

    async def aclose(self) -> None: ...


def window(now: float, length_s: int) -> tuple[int, float]:
    """The epoch-aligned window of ``length_s`` seconds holding ``now``: its index and the
    seconds left in it (a UTC day for 86,400: the epoch has no leap seconds)."""
    index = math.floor(now / length_s)
    return index, (index + 1) * length_s - now


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def check(limits: RateLimits, cost_tokens: int, used: Usage, now: float) -> LimitExceeded | None:
    """The refusal of a request costing ``cost_tokens`` by a key holding ``used``, or None.

    Where several limits refuse, the one that frees last is named: its Retry-After is when all fit.
    """
    windows: list[tuple[LimitName, int | None, int, int]] = [
        ("tokens_per_minute", limits.tokens_per_minute, used.minute_tokens, MINUTE_S),
        ("tokens_per_day", limits.tokens_per_day, used.day_tokens, DAY_S),
    ]
    for name, allowed, _, _ in windows:
        if allowed is not None and cost_tokens > allowed:
            return LimitExceeded(name, None, allowed, 0, cost_tokens)
    refusals = []
    for name, allowed, in_window, length_s in windows:
        if allowed is not None and in_window + cost_tokens > allowed:
            wait = _whole_seconds(window(now, length_s)[1])
            refusals.append(LimitExceeded(name, wait, allowed, in_window, cost_tokens))
    running_max = limits.max_concurrent_requests
    if running_max is not None and used.running >= running_max:
        refusals.append(
            LimitExceeded("max_concurrent_requests", CONCURRENCY_RETRY_AFTER_S, running_max, used.running, 1)
        )
    return max(refusals, key=lambda r: r.retry_after_s or 0) if refusals else None


def limit_error(exc: LimitExceeded) -> tuple[int, str, str, dict[str, str]]:
    """The response to a refusal: status, message, error code and headers (Retry-After)."""
    code = LIMIT_CODES[exc.limit]
    if exc.retry_after_s is None:  # retrying cannot help, so no Retry-After
        message = (
            f"this request may use {exc.requested} tokens, more than this key's {exc.limit} of {exc.allowed}: "
            "it can never run; lower max_tokens or the budget"
        )
        return 429, message, code, {}
    if exc.limit == "max_concurrent_requests":
        message = f"this key already runs {exc.used} requests, its max_concurrent_requests; retry after 1 s"
    else:
        message = (
            f"this key's {exc.limit} of {exc.allowed} is reached ({exc.used} used, this request may use "
            f"{exc.requested}); retry after {exc.retry_after_s} s"
        )
    return 429, message, code, {"Retry-After": str(exc.retry_after_s)}


def _check_cost(cost_tokens: int) -> None:
    if cost_tokens < 0:
        raise ValueError(f"cost_tokens must be >= 0, got {cost_tokens}")


class LocalLimiter:
    """The limits of one replica, kept in this process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = asyncio.Lock()
        self._windows: dict[tuple[str, int], tuple[int, int]] = {}  # (key, length_s) -> (index, tokens charged)
        self._running: dict[str, set[str]] = {}  # key -> ids of the leases holding a slot
        self._live: set[str] = set()  # leases not yet released

    def _charged(self, key_name: str, length_s: int, index: int) -> int:
        held_index, tokens = self._windows.get((key_name, length_s), (index, 0))
        return tokens if held_index == index else 0

    async def acquire(self, key_name: str, limits: RateLimits, cost_tokens: int) -> Lease:
        _check_cost(cost_tokens)
        async with self._lock:
            now = self._clock()
            minute, day = window(now, MINUTE_S)[0], window(now, DAY_S)[0]
            running = self._running.setdefault(key_name, set())
            used = Usage(self._charged(key_name, MINUTE_S, minute), self._charged(key_name, DAY_S, day), len(running))
            refused = check(limits, cost_tokens, used, now)
            if refused is not None:
                raise refused
            lease = Lease(
                key_name,
                uuid.uuid4().hex,
                cost_tokens,
                minute if limits.tokens_per_minute is not None else None,
                day if limits.tokens_per_day is not None else None,
                holds_slot=limits.max_concurrent_requests is not None,
            )
            if lease.minute is not None:
                self._windows[(key_name, MINUTE_S)] = (minute, used.minute_tokens + cost_tokens)
            if lease.day is not None:
                self._windows[(key_name, DAY_S)] = (day, used.day_tokens + cost_tokens)
            if lease.holds_slot:
                running.add(lease.lease_id)
            self._live.add(lease.lease_id)
            return lease

    async def release(self, lease: Lease, actual_tokens: int) -> None:
        refund = lease.cost_tokens - max(actual_tokens, 0)  # negative: an overrun, charged
        async with self._lock:
            if lease.lease_id not in self._live:
                return
            self._live.discard(lease.lease_id)
            for length_s, index in ((MINUTE_S, lease.minute), (DAY_S, lease.day)):
                held = self._windows.get((lease.key_name, length_s))
                if index is not None and held is not None and held[0] == index:  # a past window is gone
                    self._windows[(lease.key_name, length_s)] = (index, held[1] - refund)
            running = self._running.get(lease.key_name, set())
            running.discard(lease.lease_id)
            if not running:
                self._running.pop(lease.key_name, None)

    async def aclose(self) -> None:
        return None


# KEYS: minute counter, day counter, running leases (sorted set: lease id scored by expiry).
# ARGV: cost, tokens_per_minute, tokens_per_day, max_concurrent_requests (-1: unlimited), lease id,
# now, the lease's expiry, and the three keys' TTLs in ms (garbage collection only: a counter
# outlives its window, the set its last lease). Returns {admitted 0/1, minute, day, running}.
_ACQUIRE = """
local cost = tonumber(ARGV[1])
local tpm, tpd, max_running = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local minute = tonumber(redis.call('GET', KEYS[1]) or '0')
local day = tonumber(redis.call('GET', KEYS[2]) or '0')
local running = 0
if max_running >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[6])
  running = redis.call('ZCARD', KEYS[3])
end
if (tpm >= 0 and minute + cost > tpm) or (tpd >= 0 and day + cost > tpd)
    or (max_running >= 0 and running >= max_running) then
  return {0, minute, day, running}
end
if tpm >= 0 then
  redis.call('INCRBY', KEYS[1], cost)
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
end
if tpd >= 0 then
  redis.call('INCRBY', KEYS[2], cost)
  redis.call('PEXPIRE', KEYS[2], ARGV[9])
end
if max_running >= 0 then
  redis.call('ZADD', KEYS[3], ARGV[7], ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ARGV[10])
end
return {1, minute, day, running}
"""

# KEYS: minute counter, day counter, running leases. ARGV: refund, refund the minute (1/0), the
# day (1/0), lease id. A counter whose window has ended is gone, and stays gone.
_RELEASE = """
local refund = tonumber(ARGV[1])
for i = 1, 2 do
  if ARGV[i + 1] == '1' and refund ~= 0 and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('DECRBY', KEYS[i], refund)
  end
end
redis.call('ZREM', KEYS[3], ARGV[4])
return 1
"""

# KEYS: running leases. ARGV: lease id, new expiry, the set's TTL in ms, now. 0: the lease had
# lapsed (a slot another replica may already hold), and stays gone.
_REFRESH = """
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if expiry and tonumber(expiry) > tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
redis.call('ZREM', KEYS[1], ARGV[1])
return 0
"""


class RedisLimiter:
    """The limits of every replica, kept in Redis at ``url`` under keys starting with ``prefix``.

    Errors reaching Redis propagate from :meth:`acquire` (the caller chooses to refuse or to
    admit); a lease whose release fails lapses after ``lease_ttl_s``.
    """

    def __init__(
        self, url: str, prefix: str = "iama:", lease_ttl_s: float = 30.0, clock: Callable[[], float] = time.time
    ) -> None:
        import redis.asyncio as redis_asyncio  # only a shared deployment needs redis

        if lease_ttl_s < 0.1:
            raise ValueError(f"lease_ttl_s must be >= 0.1 s, got {lease_ttl_s}")
        self.prefix = prefix
        self.lease_ttl_s = lease_ttl_s
        self._clock = clock
        self._redis: Redis = redis_asyncio.Redis.from_url(url)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._release = self._redis.register_script(_RELEASE)
        self._refresh = self._redis.register_script(_REFRESH)
        self._heartbeats: dict[str, asyncio.Task[None]] = {}  # lease id -> its refreshing task
        self._live: set[str] = set()

    def _keys(self, key_name: str, minute: int, day: int) -> list[str]:
        # {key_name} is a Redis Cluster hash tag: one key's counters live on one node, as Lua needs.
        base = f"{self.prefix}{{{key_name}}}"
        return [f"{base}:minute:{minute}", f"{base}:day:{day}", f"{base}:running"]

    def _ttl_ms(self, seconds: float) -> int:
        return math.ceil(seconds * 1000) + 1000

    async def acquire(self, key_name: str, limits: RateLimits, cost_tokens: int) -> Lease:
        _check_cost(cost_tokens)
        now = self._clock()
        never = check(limits, cost_tokens, Usage(0, 0, 0), now)  # more than a whole window: no I/O
        if never is not None:
            raise never
        if (
            limits.tokens_per_minute is None
            and limits.tokens_per_day is None
            and limits.max_concurrent_requests is None
        ):
            # An unlimited key costs Redis nothing, now or at release (not live: nothing to release).
            return Lease(key_name, uuid.uuid4().hex, cost_tokens, None, None, holds_slot=False)
        (minute, minute_left), (day, day_left) = window(now, MINUTE_S), window(now, DAY_S)
        lease_id = uuid.uuid4().hex

        def arg(limit: int | None) -> int:
            return -1 if limit is None else limit

        admitted, *counts = await self._acquire(
            keys=self._keys(key_name, minute, day),
            args=[
                cost_tokens,
                arg(limits.tokens_per_minute),
                arg(limits.tokens_per_day),
                arg(limits.max_concurrent_requests),
                lease_id,
                repr(now),
                repr(now + self.lease_ttl_s),
                self._ttl_ms(minute_left + MINUTE_S),
                self._ttl_ms(day_left + MINUTE_S),
                self._ttl_ms(self.lease_ttl_s),
            ],
        )
        if not admitted:
            refused = check(limits, cost_tokens, Usage(*(int(c) for c in counts)), now)
            assert refused is not None, "the script and check() disagree"
            raise refused
        lease = Lease(
            key_name,
            lease_id,
            cost_tokens,
            minute if limits.tokens_per_minute is not None else None,
            day if limits.tokens_per_day is not None else None,
            holds_slot=limits.max_concurrent_requests is not None,
        )
        self._live.add(lease_id)
        if lease.holds_slot:
            self._heartbeats[lease_id] = asyncio.create_task(self._heartbeat(lease))
        return lease

    async def refresh(self, lease: Lease) -> bool:
        """Push the lease's expiry ``lease_ttl_s`` ahead; False when it had already lapsed."""
        now = self._clock()
        keys = self._keys(lease.key_name, 0, 0)[2:]
        args: list[str | int] = [
            lease.lease_id,
            repr(now + self.lease_ttl_s),
            self._ttl_ms(self.lease_ttl_s),
            repr(now),
        ]
        return bool(await self._refresh(keys=keys, args=args))

    async def _heartbeat(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl_s / 3)
            try:
                if not await self.refresh(lease):
                    log.warning(
                        "key %r: a concurrency lease lapsed while its request ran (no refresh for %g s)",
                        lease.key_name,
                        self.lease_ttl_s,
                    )
                    return
            except Exception as exc:  # Redis unreachable for a moment: try again at the next beat
                log.warning("key %r: refreshing a concurrency lease failed: %s", lease.key_name, exc)

    async def release(self, lease: Lease, actual_tokens: int) -> None:
        if lease.lease_id not in self._live:
            return
        self._live.discard(lease.lease_id)
        heartbeat = self._heartbeats.pop(lease.lease_id, None)
        if heartbeat is not None:  # first, so a failed release below lets the lease lapse
            heartbeat.cancel()
        refund = lease.cost_tokens - max(actual_tokens, 0)  # negative: an overrun, charged
        await self._release(
            keys=self._keys(lease.key_name, lease.minute or 0, lease.day or 0),
            args=[refund, int(lease.minute is not None), int(lease.day is not None), lease.lease_id],
        )

    async def aclose(self) -> None:
        for task in self._heartbeats.values():
            task.cancel()
        self._heartbeats.clear()
        await self._redis.aclose()
