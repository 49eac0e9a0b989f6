"""Per-key limits (iama_server.limits): both limiters pass the same behavioural tests (charge,
refund, 429 per limit with a truthful Retry-After, concurrency), and the Redis one holds across
real processes: two replicas share one key's budget, and a killed replica's hold lapses.

Windows run on a fake clock (``FakeClock``), so a minute boundary never falls inside a test by
chance and Retry-After is checked by moving the clock exactly that far. Redis tests use the
server at 127.0.0.1:6379, each under its own key prefix, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from in_process import until

from iama_server.keys import Limits
from iama_server.limits import (
    DAY_S,
    MINUTE_S,
    Limiter,
    LimitExceeded,
    LocalLimiter,
    RedisLimiter,
    limit_error,
    window,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
DAY_START = 19_675 * DAY_S  # 2023-11-14 00:00 UTC: a day's and a minute's start
T0 = DAY_START + 1  # 59 s left in the minute, 86,399 in the day


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping()
    except (redis.RedisError, OSError) as exc:
        pytest.skip(f"no Redis at 127.0.0.1:6379 ({exc})")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted when it ends."""
    import redis

    prefix = f"iama-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


MakeLimiter = Callable[..., Limiter]


@pytest.fixture(
    params=[pytest.param("local", marks=pytest.mark.inprocess), pytest.param("redis", marks=pytest.mark.tools)]
)
async def make_limiter(request: pytest.FixtureRequest) -> AsyncIterator[MakeLimiter]:
    """``make_limiter(clock)``: a LocalLimiter, or a RedisLimiter; limiters made twice share the
    counts (two replicas)."""
    made: list[Limiter] = []
    prefix = request.getfixturevalue("redis_prefix") if request.param == "redis" else ""

    def make(clock: Callable[[], float], lease_ttl_s: float = 60.0) -> Limiter:
        limiter: Limiter
        if request.param == "local":
            limiter = LocalLimiter(clock=clock)
        else:
            limiter = RedisLimiter(REDIS_URL, prefix=prefix, lease_ttl_s=lease_ttl_s, clock=clock)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


async def refused(limiter: Limiter, key: str, limits: Limits, cost: int) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as info:
        await limiter.acquire(key, limits, cost)
    return info.value


async def test_a_request_is_charged_its_cost_up_front_and_refunded_to_what_it_used(make_limiter: MakeLimiter):
    limiter = make_limiter(FakeClock())
    limits = Limits(tokens_per_minute=100)
    first = await limiter.acquire("acme", limits, 60)
    no = await refused(limiter, "acme", limits, 50)  # 60 charged + 50 > 100
    assert (no.limit, no.used, no.requested, no.allowed) == ("tokens_per_minute", 60, 50, 100)
    await limiter.release(first, actual_tokens=20)  # 40 refunded: 20 remain charged
    await limiter.acquire("acme", limits, 80)  # 20 + 80 = 100 fits exactly
    assert (await refused(limiter, "acme", limits, 1)).used == 100


async def test_an_overrun_beyond_the_cost_is_charged(make_limiter: MakeLimiter):
    limiter = make_limiter(FakeClock())
    limits = Limits(tokens_per_minute=100)
    lease = await limiter.acquire("acme", limits, 50)
    await limiter.release(lease, actual_tokens=70)
    assert (await refused(limiter, "acme", limits, 31)).used == 70
    await limiter.acquire("acme", limits, 30)


async def test_releasing_twice_refunds_once(make_limiter: MakeLimiter):
    limiter = make_limiter(FakeClock())
    limits = Limits(tokens_per_minute=100, max_concurrent_requests=1)
    lease = await limiter.acquire("acme", limits, 90)
    await limiter.release(lease, actual_tokens=40)
    await limiter.release(lease, actual_tokens=0)
    assert (await refused(limiter, "acme", limits, 61)).used == 40


@pytest.mark.parametrize(
    ("limit", "length_s", "first_wait_s"),
    [("tokens_per_minute", MINUTE_S, 59), ("tokens_per_day", DAY_S, DAY_S - 1)],
)
async def test_a_full_window_refuses_with_the_seconds_until_it_ends_and_then_admits(
    make_limiter: MakeLimiter, limit: str, length_s: int, first_wait_s: int
):
    clock = FakeClock()
    limiter = make_limiter(clock)
    limits = Limits(**{limit: 100})
    await limiter.acquire("acme", limits, 100)
    no = await refused(limiter, "acme", limits, 1)
    assert (no.limit, no.retry_after_s) == (limit, first_wait_s)
    status, message, code, headers = limit_error(no)
    assert (status, code, headers) == (429, f"rate_limit_{limit}", {"Retry-After": str(first_wait_s)})
    assert f"retry after {first_wait_s} s" in message
    clock.advance(no.retry_after_s - 0.5)  # half a second early: still the same window
    assert (await refused(limiter, "acme", limits, 1)).retry_after_s == 1
    clock.advance(0.5)  # exactly Retry-After later: a new window
    await limiter.acquire("acme", limits, 100)
    assert window(clock(), length_s)[0] == window(T0, length_s)[0] + 1


async def test_retry_after_is_at_least_one_second(make_limiter: MakeLimiter):
    clock = FakeClock(DAY_START + MINUTE_S - 0.001)  # a millisecond before the minute ends
    limiter = make_limiter(clock)
    limits = Limits(tokens_per_minute=10)
    await limiter.acquire("acme", limits, 10)
    assert (await refused(limiter, "acme", limits, 1)).retry_after_s == 1


async def test_when_two_windows_refuse_the_one_that_frees_last_is_named(make_limiter: MakeLimiter):
    limiter = make_limiter(FakeClock())
    limits = Limits(tokens_per_minute=100, tokens_per_day=100)
    await limiter.acquire("acme", limits, 100)
    no = await refused(limiter, "acme", limits, 1)
    assert (no.limit, no.retry_after_s) == ("tokens_per_day", DAY_S - 1)  # a new minute would not help


async def test_a_refused_request_charges_no_window(make_limiter: MakeLimiter):
    clock = FakeClock()
    limiter = make_limiter(clock)
    limits = Limits(tokens_per_minute=100, tokens_per_day=150)
    await limiter.acquire("acme", limits, 60)
    assert (await refused(limiter, "acme", limits, 50)).limit == "tokens_per_minute"
    clock.advance(MINUTE_S)
    await limiter.acquire("acme", limits, 90)  # 60 + 90 = 150: the refused 50 never reached the day
    assert (await refused(limiter, "acme", limits, 1)).limit == "tokens_per_day"


async def test_a_refund_after_its_window_ended_does_not_touch_the_new_one(make_limiter: MakeLimiter):
    clock = FakeClock()
    limiter = make_limiter(clock)
    limits = Limits(tokens_per_minute=100)
    lease = await limiter.acquire("acme", limits, 80)
    clock.advance(MINUTE_S)
    await limiter.acquire("acme", limits, 100)
    await limiter.release(lease, actual_tokens=0)  # 80 back to a minute that is over
    assert (await refused(limiter, "acme", limits, 1)).used == 100


async def test_concurrency_counts_running_requests_until_they_are_released(make_limiter: MakeLimiter):
    limiter = make_limiter(FakeClock())
    limits = Limits(max_concurrent_requests=2)
    first = await limiter.acquire("acme", limits, 10)
    await limiter.acquire("acme", limits, 10)
    no = await refused(limiter, "acme", limits, 10)
    assert (no.limit, no.retry_after_s, no.used, no.allowed) == ("max_concurrent_requests", 1, 2, 2)
    assert limit_error(no)[2:] == ("rate_limit_concurrency", {"Retry-After": "1"})
    await limiter.release(first, actual_tokens=10)
    await limiter.acquire("acme", limits, 10)


async def test_a_request_larger_than_a_whole_window_never_fits_and_gets_no_retry_after(make_limiter: MakeLimiter):
    limiter = make_limiter(FakeClock())
    no = await refused(limiter, "acme", Limits(tokens_per_minute=100, max_concurrent_requests=1), 101)
    assert (no.limit, no.retry_after_s) == ("tokens_per_minute", None)
    status, message, code, headers = limit_error(no)
    assert (status, code, headers) == (429, "rate_limit_tokens_per_minute", {})
    assert "can never run" in message
    await limiter.acquire("acme", Limits(tokens_per_minute=100, max_concurrent_requests=1), 100)  # no slot leaked


async def test_keys_have_their_own_budgets_and_unlimited_keys_are_never_refused(make_limiter: MakeLimiter):
    limiter = make_limiter(FakeClock())
    limits = Limits(tokens_per_minute=100, max_concurrent_requests=1)
    await limiter.acquire("acme", limits, 100)
    await limiter.acquire("globex", limits, 100)
    for _ in range(20):
        await limiter.acquire("initech", Limits(), 10**9)


@pytest.mark.inprocess
async def test_a_negative_cost_is_a_bug_not_a_refund():
    with pytest.raises(ValueError, match="cost_tokens must be >= 0"):
        await LocalLimiter().acquire("acme", Limits(), -1)


@pytest.mark.tools
async def test_a_refreshed_lease_outlives_its_ttl_and_an_unrefreshed_one_lapses(redis_prefix: str):
    clock = FakeClock()
    holder = RedisLimiter(REDIS_URL, prefix=redis_prefix, lease_ttl_s=60, clock=clock)
    other = RedisLimiter(REDIS_URL, prefix=redis_prefix, lease_ttl_s=60, clock=clock)
    limits = Limits(max_concurrent_requests=1)
    try:
        lease = await holder.acquire("acme", limits, 10)
        clock.advance(50)
        assert await holder.refresh(lease)
        clock.advance(50)  # 100 s after the acquire, 50 after the refresh: still held
        assert (await refused(other, "acme", limits, 10)).limit == "max_concurrent_requests"
        clock.advance(11)  # 61 s without a refresh: lapsed
        await other.acquire("acme", limits, 10)
        assert not await holder.refresh(lease)  # and a late refresh does not bring it back
        assert (await refused(holder, "acme", limits, 10)).used == 1
    finally:
        await holder.aclose()
        await other.aclose()


# --- Redis across real processes -----------------------------------------------------------

REPLICA = """
import asyncio, sys, time
from iama_server.keys import Limits
from iama_server.limits import LimitExceeded, RedisLimiter

url, prefix, cost, fixed_time, ttl, limits = sys.argv[1:7]
now = float(fixed_time)
clock = (lambda: now) if now else time.time  # 0: the real clock

async def main():
    limiter = RedisLimiter(url, prefix=prefix, lease_ttl_s=float(ttl), clock=clock)
    try:
        lease = await limiter.acquire("acme", Limits.model_validate_json(limits), int(cost))
    except LimitExceeded as exc:
        print("refused", exc.limit, exc.used, flush=True)
        return
    print("acquired", lease.lease_id, flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # hold until told (or killed)
    await limiter.release(lease, actual_tokens=int(cost))
    print("released", flush=True)
    await limiter.aclose()

asyncio.run(main())
"""


async def replica(
    prefix: str, cost: int, limits: Limits, fixed_time: float = 0.0, ttl: float = 60.0
) -> asyncio.subprocess.Process:
    """A second replica: a process with its own RedisLimiter, acquiring for key 'acme' (on a clock
    stopped at ``fixed_time``, or the real one)."""
    args = [REDIS_URL, prefix, str(cost), repr(fixed_time), str(ttl), limits.model_dump_json()]
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", REPLICA, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )


async def says(proc: asyncio.subprocess.Process, what: str, ceiling_s: float = 60.0) -> list[str]:
    """The replica's next line, split; fails naming ``what`` it was expected to say."""
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), ceiling_s)
    except TimeoutError:
        raise AssertionError(f"the replica did not say {what!r} within {ceiling_s:g} s") from None
    words = line.decode().split()
    assert words and words[0] == what, f"the replica said {line!r}, expected {what!r}"
    return words


async def stopped(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await asyncio.wait_for(proc.wait(), 60)


@pytest.mark.tools
async def test_two_replicas_share_one_keys_tokens_per_minute(redis_prefix: str):
    limits = Limits(tokens_per_minute=100)
    other = await replica(redis_prefix, 60, limits, fixed_time=T0)
    try:
        await says(other, "acquired")
        here = RedisLimiter(REDIS_URL, prefix=redis_prefix, clock=FakeClock())
        no = await refused(here, "acme", limits, 50)  # the other replica holds 60 of 100
        assert (no.limit, no.used) == ("tokens_per_minute", 60)
        await here.acquire("acme", limits, 40)
        await here.aclose()
    finally:
        await stopped(other)
    third = await replica(redis_prefix, 1, limits, fixed_time=T0)  # and this replica's 40 count there
    assert await says(third, "refused") == ["refused", "tokens_per_minute", "100"]
    await stopped(third)


@pytest.mark.tools
async def test_two_replicas_share_one_keys_concurrency(redis_prefix: str):
    limits = Limits(max_concurrent_requests=1)
    other = await replica(redis_prefix, 10, limits)
    here = RedisLimiter(REDIS_URL, prefix=redis_prefix)
    try:
        await says(other, "acquired")
        assert (await refused(here, "acme", limits, 10)).limit == "max_concurrent_requests"
        assert other.stdin is not None
        other.stdin.write(b"release\n")
        await says(other, "released")
        lease = await here.acquire("acme", limits, 10)
        assert (await replica_refusal(redis_prefix, limits)) == "max_concurrent_requests"
        await here.release(lease, 10)
    finally:
        await here.aclose()
        await stopped(other)


async def replica_refusal(prefix: str, limits: Limits) -> str:
    proc = await replica(prefix, 10, limits)
    words = await says(proc, "refused")
    await stopped(proc)
    return words[1]


@pytest.mark.tools
async def test_a_killed_replicas_concurrency_hold_lapses_after_lease_ttl(redis_prefix: str):
    import redis.asyncio as redis_asyncio

    ttl = 1.0
    limits = Limits(max_concurrent_requests=1)
    other = await replica(redis_prefix, 10, limits, ttl=ttl)
    here = RedisLimiter(REDIS_URL, prefix=redis_prefix, lease_ttl_s=ttl)
    client = redis_asyncio.Redis.from_url(REDIS_URL)
    try:
        lease_id = (await says(other, "acquired"))[1]
        running = f"{redis_prefix}{{acme}}:running"
        first_expiry = await client.zscore(running, lease_id)
        assert first_expiry is not None
        assert (await refused(here, "acme", limits, 10)).limit == "max_concurrent_requests"

        async def kept_alive_past_its_first_expiry() -> bool:
            expiry = await client.zscore(running, lease_id)
            return time.time() > first_expiry and expiry is not None and expiry > first_expiry

        await until(
            kept_alive_past_its_first_expiry, "the live replica's heartbeat to carry its lease past lease_ttl_s"
        )
        os.kill(other.pid, signal.SIGKILL)
        await stopped(other)

        async def admitted() -> bool:
            try:
                await here.acquire("acme", limits, 10)
            except LimitExceeded:
                return False
            return True

        await until(admitted, "the killed replica's lease to lapse and a new acquire to succeed", ceiling_s=30)
        assert await client.zscore(running, lease_id) is None
    finally:
        await client.aclose()
        await here.aclose()
        await stopped(other)
