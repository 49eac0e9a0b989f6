"""Tenants end to end: the real app with a keys file, each key's policy enforced where a request
meets it. A key's per-request limits and models are 403s naming the field; its windows and
concurrency are 429s with a Retry-After; its priority orders the admission queue; the file
reloads (watcher, SIGHUP) without a restart and without breaking requests in flight; every
request that reached a route leaves one usage row, summed by ``GET /v1/usage``; no plaintext key
surfaces anywhere; an answered row survives ``kill -9`` (SQLite, PostgreSQL); and replicas
share a key's limits through Redis.

Waits are by construction: the fake engine holds generations (``FakeEngine.hold``) so that a
request is running or queued when the test acts, and token windows run on a stopped clock, so a
minute boundary never falls inside a test. Redis and PostgreSQL tests (``tools``) skip where the
service is absent, and use their own Redis prefix or PostgreSQL schema, removed afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from exposition import metric
from in_process import API_KEY, InProcess, raw_post, serve, until
from servers import ServerProc, free_port, spawn_until_healthy
from sqlalchemy import select

from iama_server.admission import request_cost
from iama_server.keys import Limits, hash_key
from iama_server.limits import DAY_S, LimitExceeded, LocalLimiter
from iama_server.usage import UsageStore

REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
FROZEN = 19_675 * DAY_S + 1  # 2023-11-14 00:00:01 UTC: 59 s left in the minute

# Recognisable plaintexts: a leak is a plain substring search away.
KEYS = {
    "acme": "sk-PLAINTEXT-acme-5b1c9e",  # small limits, one model
    "adapter": "sk-PLAINTEXT-adapter-77aa01",  # only an adapter this server does not serve
    "metered": "sk-PLAINTEXT-metered-0d4f3b",  # 100 tokens a minute
    "single": "sk-PLAINTEXT-single-9e2d70",  # one request at a time
    "high": "sk-PLAINTEXT-high-31c8aa",
    "low": "sk-PLAINTEXT-low-c0ffee",
    "ops": "sk-PLAINTEXT-ops-a11ce5",  # admin
}
ALIGN = {"prompt": "How was your day?", "reward_weights": {"sentiment": 1.0}, "budget": 2, "max_tokens": 8}
CHAT = {
    "messages": [{"role": "user", "content": "How was your day?"}],
    "best_of": 2,
    "reward_weights": {"sentiment": 1.0},
    "max_tokens": 8,
}


def entry(name: str, **policy: object) -> dict[str, object]:
    return {"name": name, "sha256": hash_key(KEYS[name]), **policy}


def write_keys(path: Path, *entries: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump({"keys": list(entries)}))
    return path


TENANTS = [
    entry("acme", limits={"max_budget": 4, "max_tokens": 16}, models=["fake"]),
    entry("adapter", models=["my-adapter"]),
    entry("metered", limits={"tokens_per_minute": 100}),
    entry("single", limits={"max_concurrent_requests": 1}),
    entry("high", priority="high"),
    entry("low", priority="low"),
    entry("ops", admin=True),
]


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return write_keys(tmp_path / "keys.yaml", *TENANTS)


def as_key(name: str, **more: str) -> dict[str, str]:
    # lower case: raw_post's default header is ``authorization``, and this must replace it
    return {"authorization": f"Bearer {KEYS[name]}", **more}


async def post(s: InProcess, key: str, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return await s.client.post(path, json=body, headers=as_key(key, **headers))


def refusal(r: httpx.Response) -> tuple[int, str, str | None]:
    error = r.json()["error"]
    return r.status_code, error["code"], error["param"]


async def answers(s: InProcess, key: str) -> bool:
    """The server knows ``key`` (``/v1/models`` writes no usage row)."""
    return (await s.client.get("/v1/models", headers=as_key(key))).status_code == 200


def freeze_limits(s: InProcess) -> None:
    """The key windows of this app on a stopped clock (a fresh limiter: nothing charged yet)."""
    s.state.limiter = s.state.service.limiter = LocalLimiter(clock=lambda: FROZEN)


async def cost_and_use(body: dict[str, Any]) -> tuple[int, int]:
    """An /v1/align request's admission cost (``prompt + N × max_tokens``: no judge here) and the
    tokens it uses, read from its answer on a server of its own (the fake engine is deterministic)."""
    async with serve() as s:
        r = await s.client.post("/v1/align", json=body)
    usage = r.json()["usage"]
    cost = request_cost(usage["prompt_tokens"], body["budget"], body["max_tokens"])
    return cost, usage["prompt_tokens"] + usage["completion_tokens"] + usage["judge_tokens"]


def usage_rows(store: UsageStore) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(store.table).order_by(store.table.c.id)).mappings())


# --- policy: 403 for what a key may never ask, 401 for an unknown key -----------------------


@pytest.mark.inprocess
async def test_a_keys_policy_refuses_what_it_may_never_ask_with_a_403_naming_the_field(keys_file: Path):
    async with serve(keys_file=keys_file) as s:
        over_budget = await post(s, "acme", "/v1/align", {**ALIGN, "budget": 5})
        assert refusal(over_budget) == (403, "key_limit", "budget")
        assert "acme" in over_budget.json()["error"]["message"]
        over_best_of = await post(s, "acme", "/v1/chat/completions", {**CHAT, "best_of": 5})
        assert refusal(over_best_of) == (403, "key_limit", "best_of")
        over_n = await post(s, "acme", "/v1/completions", {"prompt": "Hi", "n": 5, "max_tokens": 8})
        assert refusal(over_n) == (403, "key_limit", "n")
        over_tokens = await post(s, "acme", "/v1/align", {**ALIGN, "max_tokens": 17})
        assert refusal(over_tokens) == (403, "key_limit", "max_tokens")
        not_its_model = await post(s, "adapter", "/v1/align", ALIGN)
        assert refusal(not_its_model) == (403, "model_not_allowed", "model")
        never_fits = await post(s, "metered", "/v1/align", {**ALIGN, "budget": 8, "max_tokens": 16})  # > 100
        assert refusal(never_fits) == (403, "key_limit", "budget")
        assert not s.engine.calls  # none of them reached the engine

        assert (await post(s, "acme", "/v1/align", {**ALIGN, "budget": 4, "max_tokens": 16})).status_code == 200
        unknown = await s.client.post("/v1/align", json=ALIGN, headers={"authorization": "Bearer sk-nobody"})
        assert refusal(unknown) == (401, "invalid_api_key", None)
        plain = {**ALIGN, "budget": 5, "max_tokens": 17}  # over acme's limits, not the plain key's
        assert (await s.client.post("/v1/align", json=plain)).status_code == 200  # API_KEY: key-1


# --- windows and concurrency: 429 with Retry-After --------------------------------------------


@pytest.mark.inprocess
async def test_a_key_at_its_concurrency_gets_429_with_retry_after_while_its_request_runs(keys_file: Path):
    async with serve(keys_file=keys_file) as s:
        s.engine.hold()
        first = asyncio.create_task(post(s, "single", "/v1/align", ALIGN))
        await until(lambda: len(s.engine.running) == 1, "single's first request generating")
        second = await post(s, "single", "/v1/align", ALIGN)
        assert refusal(second) == (429, "rate_limit_concurrency", None)
        assert second.headers["retry-after"] == "1"
        s.engine.release()
        assert (await first).status_code == 200
        assert (await post(s, "single", "/v1/align", ALIGN)).status_code == 200  # its slot is free again


@pytest.mark.inprocess
async def test_tokens_per_minute_refuse_while_a_cost_is_held_and_the_refund_to_actual_use_readmits(
    tmp_path: Path,
):
    cost, used = await cost_and_use(ALIGN)
    assert cost > used, "the candidates must stop before max_tokens, or no refund shows"
    # Room for one cost beside one request's actual use: not for two costs.
    path = write_keys(tmp_path / "keys.yaml", entry("metered", limits={"tokens_per_minute": cost + used}))
    async with serve(keys_file=path) as s:
        freeze_limits(s)
        s.engine.hold()
        first = asyncio.create_task(post(s, "metered", "/v1/align", ALIGN))
        await until(lambda: len(s.engine.running) == 1, "metered's first request generating")
        second = await post(s, "metered", "/v1/align", ALIGN)
        assert refusal(second) == (429, "rate_limit_tokens_per_minute", None)
        assert second.headers["retry-after"] == "59"  # the seconds left in the minute
        s.engine.release()
        assert (await first).status_code == 200  # charged `used` now, not `cost`
        assert (await post(s, "metered", "/v1/align", ALIGN)).status_code == 200
        third = await post(s, "metered", "/v1/align", ALIGN)  # 2 × used + cost > cost + used
        assert refusal(third) == (429, "rate_limit_tokens_per_minute", None)


# --- priorities in admission ------------------------------------------------------------------


async def admission_order(s: InProcess, queued: list[tuple[str, str]]) -> list[str]:
    """One request holds the only slot; the ``(request id, key)`` requests queue in this order;
    then the engine lets go. The request ids in the order the engine got them."""
    s.engine.hold()
    tasks = [asyncio.create_task(s.client.post("/v1/align", json=ALIGN, headers={"x-request-id": "occupier"}))]
    await until(lambda: len(s.engine.running) == 1, "the occupier generating")
    for n, (rid, key) in enumerate(queued, start=1):
        tasks.append(asyncio.create_task(post(s, key, "/v1/align", ALIGN, **{"x-request-id": rid})))
        await until(lambda n=n: s.state.admission.waiting == n, f"{rid} queued ({n} waiting)")
    s.engine.release()
    assert [r.status_code for r in await asyncio.gather(*tasks)] == [200] * len(tasks)
    return [engine_id.rsplit("-", 1)[0] for *_, engine_id in s.engine.calls]


QUEUED = [("low-1", "low"), ("high-1", "high"), ("low-2", "low"), ("high-2", "high")]


@pytest.mark.inprocess
async def test_a_higher_class_is_admitted_first_and_each_class_in_arrival_order(keys_file: Path):
    # aging an hour away: no request is old enough to jump its class, however slow the machine
    over = {"max_concurrent_requests": 1, "max_queued_requests": 4, "priority_aging_s": 3600}
    async with serve(keys_file=keys_file, **over) as s:
        assert await admission_order(s, QUEUED) == ["occupier", "high-1", "high-2", "low-1", "low-2"]
        priorities = {engine_id.rsplit("-", 1)[0]: sampling.priority for _, sampling, _, engine_id in s.engine.calls}
    assert priorities == {"occupier": 1, "high-1": 0, "high-2": 0, "low-1": 2, "low-2": 2}  # vLLM's, too


@pytest.mark.inprocess
async def test_with_priority_aging_0_every_waiting_request_has_aged_and_admission_is_fifo(keys_file: Path):
    over = {"max_concurrent_requests": 1, "max_queued_requests": 4, "priority_aging_s": 0}
    async with serve(keys_file=keys_file, **over) as s:
        assert await admission_order(s, QUEUED) == ["occupier", "low-1", "high-1", "low-2", "high-2"]


# --- reloads ------------------------------------------------------------------------------------


@pytest.mark.inprocess
async def test_a_key_added_to_the_file_is_usable_without_a_restart(tmp_path: Path):
    path = write_keys(tmp_path / "keys.yaml", entry("acme"))
    async with serve(keys_file=path, keys_reload_s=0.05) as s:
        assert not await answers(s, "ops")
        write_keys(path, entry("acme"), entry("ops", admin=True))
        await until(lambda: answers(s, "ops"), "the watcher to load key 'ops'")
        assert (await post(s, "ops", "/v1/align", ALIGN)).status_code == 200


@pytest.mark.inprocess
async def test_a_broken_file_keeps_the_keys_in_use_and_says_so_once_naming_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    path = write_keys(tmp_path / "keys.yaml", entry("acme"))
    async with serve(keys_file=path, keys_reload_s=0.05) as s:
        ring, polls = s.state.keys, 0
        reload_if_changed = ring.reload_if_changed

        def counted() -> str | None:  # the watcher's poll, counted
            nonlocal polls
            polls += 1
            return reload_if_changed()

        ring.reload_if_changed = counted

        def reports() -> list[str]:
            return [r.getMessage() for r in caplog.records if "not reloaded" in r.getMessage()]

        with caplog.at_level(logging.INFO, logger="iama.server"):
            path.write_text("keys: [{name: acme\n")
            await until(lambda: reports(), "the watcher to report the broken file")
            seen = polls
            await until(lambda: polls >= seen + 3, "three more polls of the broken file")
            assert (await post(s, "acme", "/v1/align", ALIGN)).status_code == 200
        (report,) = reports()
        assert str(path) in report and "\n" not in report


@pytest.mark.inprocess
async def test_a_request_in_flight_under_a_key_the_reload_removes_still_finishes(tmp_path: Path):
    path = write_keys(tmp_path / "keys.yaml", entry("acme"), entry("ops", admin=True))
    async with serve(keys_file=path, keys_reload_s=0.05) as s:
        s.engine.hold()
        flight = asyncio.create_task(post(s, "acme", "/v1/align", ALIGN, **{"x-request-id": "in-flight"}))
        await until(lambda: len(s.engine.running) == 1, "acme's request generating")
        write_keys(path, entry("ops", admin=True))
        await until(lambda: s.state.keys.lookup(KEYS["acme"]) is None, "the reload removing 'acme'")
        assert not await answers(s, "acme")
        s.engine.release()
        assert (await flight).status_code == 200
        (row,) = [r for r in usage_rows(s.state.usage) if r["request_id"] == "in-flight"]
        assert (row["key_name"], row["status"]) == ("acme", 200)


@pytest.mark.inprocess
async def test_sighup_reloads_the_keys_file(tmp_path: Path):
    path = write_keys(tmp_path / "keys.yaml", entry("acme"))
    async with serve(keys_file=path, keys_reload_s=60) as s:  # the watcher's first poll is a minute away
        if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, signal.SIG_IGN, None):  # else SIGHUP kills pytest
            pytest.skip("no SIGHUP handler installed (not the main thread): the file is polled only")
        write_keys(path, entry("ops", admin=True))
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: answers(s, "ops"), "SIGHUP to reload the keys file", ceiling_s=30)
        assert not await answers(s, "acme")


# --- usage --------------------------------------------------------------------------------------


@pytest.mark.inprocess
async def test_every_request_that_reached_a_route_has_one_usage_row_and_v1_usage_sums_them(keys_file: Path):
    async with serve(keys_file=keys_file) as s:
        answered = [
            await post(s, "acme", "/v1/align", ALIGN),
            await post(s, "low", "/v1/chat/completions", CHAT),
        ]
        bad = await post(s, "acme", "/v1/align", {**ALIGN, "budget": 9})  # over the server's max_budget
        forbidden = await post(s, "acme", "/v1/align", {**ALIGN, "budget": 5})  # over acme's
        await s.client.post("/v1/align", json=ALIGN, headers={"authorization": "Bearer sk-nobody"})  # 401: no route
        s.engine.hold()
        running = asyncio.create_task(post(s, "single", "/v1/align", ALIGN))
        await until(lambda: len(s.engine.running) == 1, "single's request generating")
        busy = await post(s, "single", "/v1/align", ALIGN)
        gone = raw_post(s.app, "/v1/align", ALIGN, headers=as_key("high", **{"x-request-id": "gone"}))
        await until(lambda: len(s.engine.running) == 2, "high's request generating")
        gone.gone.set()
        await gone.task
        s.engine.release()
        answered.append(await running)
        assert [bad.status_code, forbidden.status_code, busy.status_code, gone.status()] == [400, 403, 429, 499]
        assert [r.status_code for r in answered] == [200, 200, 200]

        rows = usage_rows(s.state.usage)
        by_key_status = sorted((r["key_name"], r["status"], r["outcome"]) for r in rows)
        assert by_key_status == [
            ("acme", 200, "ok"), ("acme", 400, "error"), ("acme", 403, "error"), ("high", 499, "cancelled"),
            ("low", 200, "ok"), ("single", 200, "ok"), ("single", 429, "error"),
        ]  # fmt: skip
        metrics = (await s.client.get("/metrics")).text
        for (key, status, _), n in Counter(by_key_status).items():
            assert metric(metrics, f'iama_key_requests_total{{key="{key}",status="{status}"}}') == n
        by_id = {r["request_id"]: r for r in rows}
        for r in answered:
            row, usage = by_id[r.headers["x-request-id"]], r.json()["usage"]
            assert (row["prompt_tokens"], row["generated_tokens"], row["judge_tokens"]) == (
                usage["prompt_tokens"],
                usage["completion_tokens"],
                usage["judge_tokens"],
            )

        ops = as_key("ops")
        (total,) = (await s.client.get("/v1/usage", headers=ops)).json()["data"]
        sums = {f: sum(r[f] for r in rows) for f in ("prompt_tokens", "generated_tokens", "judge_tokens")}
        assert total == {
            "group": None,
            "requests": len(rows),
            "candidates": sum(r["candidates_started"] for r in rows),
            **sums,
        }
        groups = (await s.client.get("/v1/usage", headers=ops, params={"group_by": "key"})).json()["data"]
        assert [g["group"] for g in groups] == ["acme", "high", "low", "single"]
        assert [g["requests"] for g in groups] == [3, 1, 1, 2]
        for field in ("requests", "prompt_tokens", "generated_tokens", "judge_tokens", "candidates"):
            assert sum(g[field] for g in groups) == total[field]
        acme = (await s.client.get("/v1/usage", headers=ops, params={"key": "acme"})).json()["data"]
        assert acme == [{**groups[0], "group": None}]

        assert refusal(await s.client.get("/v1/usage", headers=as_key("acme"))) == (403, "admin_only", None)
        naive = await s.client.get("/v1/usage", headers=ops, params={"since": "2026-01-01T00:00:00"})
        assert (naive.status_code, naive.json()["error"]["param"]) == (400, "since")
        assert len(usage_rows(s.state.usage)) == len(rows)  # /v1/usage itself leaves no row


@pytest.mark.inprocess
async def test_a_stream_its_client_leaves_is_recorded_with_the_tokens_it_was_sent(keys_file: Path):
    """Not zero: else a client could read an answer and leave before its last chunk, for free."""
    body = {**CHAT, "stream": True, "best_of": None, "reward_weights": None}
    async with serve(keys_file=keys_file) as s:
        s.engine.hold()  # the fake's stream stops after its first token
        call = raw_post(s.app, "/v1/chat/completions", body, headers=as_key("acme", **{"x-request-id": "left"}))
        await until(lambda: b'"content": "I"' in call.body(), "the first token streamed")
        call.gone.set()
        await call.task
        s.engine.release()
        ((prompt_ids, *_),) = s.engine.calls
        (row,) = usage_rows(s.state.usage)
    assert (row["request_id"], row["status"], row["outcome"]) == ("left", 499, "cancelled")
    assert (row["prompt_tokens"], row["generated_tokens"]) == (len(prompt_ids), 1)


@pytest.mark.inprocess
async def test_an_early_rejection_stream_left_mid_search_is_recorded_with_every_candidates_tokens(keys_file: Path):
    """The search had not ended (no outcome): the row still has what the candidates generated,
    and the key is refunded to that rather than charged the admission cost."""
    er = {"checkpoints": [4], "keep": 0.5}
    body = {**CHAT, "best_of": 4, "stream": True, "early_rejection": er}
    async with serve(keys_file=keys_file) as s:
        freeze_limits(s)
        s.engine.limit_tokens(2)  # every candidate pauses at 2 tokens: the checkpoint at 4 is never reached
        call = raw_post(s.app, "/v1/chat/completions", body, headers=as_key("metered", **{"x-request-id": "left-er"}))
        await until(lambda: s.engine.streamed_tokens == 8, "every candidate at its 2 tokens")
        call.gone.set()
        await call.task
        s.engine.limit_tokens(None)
        prompt_ids = s.engine.calls[0][0]
        (row,) = usage_rows(s.state.usage)
        with pytest.raises(LimitExceeded) as charged:  # a probe asking for the whole minute: refused, saying
            await s.state.limiter.acquire("metered", Limits(tokens_per_minute=100), 100)
    assert (row["request_id"], row["status"], row["outcome"]) == ("left-er", 499, "cancelled")
    assert (row["prompt_tokens"], row["generated_tokens"]) == (len(prompt_ids), 8)
    assert charged.value.used == len(prompt_ids) + 8 < request_cost(len(prompt_ids), 4, CHAT["max_tokens"])


# --- secrets ------------------------------------------------------------------------------------


@pytest.mark.inprocess
async def test_no_plaintext_key_reaches_a_log_line_metrics_an_answer_or_a_usage_row(
    keys_file: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    near_miss = KEYS["acme"][:-1] + "X"
    secrets = [*KEYS.values(), near_miss, API_KEY]
    secrets += [hash_key(k) for k in secrets]  # nor their SHA-256 (a short key's can be reversed)
    async with serve(keys_file=keys_file) as s:
        tried = [
            await post(s, "acme", "/v1/align", ALIGN),  # 200
            await post(s, "acme", "/v1/align", {**ALIGN, "budget": 5}),  # 403 key_limit
            await post(s, "adapter", "/v1/align", ALIGN),  # 403 model_not_allowed
            await post(s, "acme", "/v1/usage", {}),  # 405
            await s.client.get("/v1/usage", headers=as_key("acme")),  # 403 admin_only
            await s.client.get("/v1/usage", headers={"authorization": f"Bearer {near_miss}"}),  # 401
            await s.client.post("/v1/align", json=ALIGN, headers={"authorization": f"Bearer {near_miss}"}),
            await s.client.post("/v1/align", json=ALIGN, headers={"authorization": near_miss}),  # no "Bearer"
            await s.client.get("/v1/usage", params={"key": KEYS["acme"]}),  # a key where its name goes
        ]
        assert sorted(r.status_code for r in tried) == [200, 200, 401, 401, 401, 403, 403, 403, 405]
        metrics = (await s.client.get("/metrics")).text
        rows = usage_rows(s.state.usage)
    assert len(rows) == 3
    seen = {
        # httpx's records are the test client's own (it logs the URL it was given: the last call's)
        "log": [r.getMessage() + (r.exc_text or "") for r in caplog.records if r.name != "httpx"],
        "/metrics": [metrics],
        "answer": [f"{r.headers} {r.text}" for r in tried],
        "usage row": [repr(dict(row)) for row in rows],
    }
    assert any(r.name == "iama.server" for r in caplog.records)  # the server's lines were captured
    leaks = [(where, secret) for where, texts in seen.items() for t in texts for secret in secrets if secret in t]
    assert not leaks


# --- second processes: kill -9 and replicas --------------------------------------------------


FAKE_SERVER = str(Path(__file__).with_name("fake_server.py"))


@contextmanager
def fake_server(log_dir: Path, *args: str) -> Iterator[ServerProc]:
    """``tests/fake_server.py`` in a process of its own, healthy; stopped (SIGTERM) at the end."""
    port = free_port()
    cmd = [sys.executable, FAKE_SERVER, "--port", str(port), *args]
    server = spawn_until_healthy(cmd, port, log_dir / f"fake-server-{port}.log", dict(os.environ), 120)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def usage_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A usage store's URL: a SQLite file, or a PostgreSQL schema of this test's own (dropped
    afterwards; the settings name no table, so the schema is what keeps tests apart)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'usage.sqlite3'}"
        return
    import psycopg

    dsn = "host=127.0.0.1 port=5432 user=postgres dbname=test"
    try:
        psycopg.connect(dsn, connect_timeout=1).close()
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432/test ({str(exc).strip().splitlines()[0]})")
    schema = f"iama_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield f"{POSTGRES_URL}?options=-c%20search_path%3D{schema}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.mark.tools
def test_a_server_killed_with_sigkill_loses_no_answered_usage_row(usage_db: str, tmp_path: Path):
    with fake_server(tmp_path, "--usage-db", usage_db) as server:
        auth = {"authorization": f"Bearer {API_KEY}"}
        answered = [httpx.post(f"{server.url}/v1/align", json=ALIGN, headers=auth, timeout=60) for _ in range(5)]
        server.proc.kill()
        server.proc.wait(60)
    assert [r.status_code for r in answered] == [200] * 5
    assert server.proc.returncode == -signal.SIGKILL
    store = UsageStore(usage_db)  # as the restarted server opens it
    try:
        stored = [r["request_id"] for r in usage_rows(store)]
    finally:
        store.dispose()
    assert stored == [r.headers["x-request-id"] for r in answered]


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted when it ends."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=1)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        pytest.skip(f"no Redis at 127.0.0.1:6379 ({exc})")
    prefix = f"iama-test:{uuid.uuid4().hex}:"
    yield prefix
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.tools
@pytest.mark.parametrize("shared", [True, False], ids=["through-redis", "each-its-own"])
async def test_two_replicas_share_one_keys_tokens_per_minute_through_redis(
    shared: bool, tmp_path: Path, request: pytest.FixtureRequest
):
    cost, used = await cost_and_use(ALIGN)
    # After one request (charged `used`), one more `cost` is one token too many: on one replica's
    # books, or on both replicas' shared in Redis; a replica that counts alone has room.
    path = write_keys(tmp_path / "keys.yaml", entry("metered", limits={"tokens_per_minute": cost + used - 1}))
    args = ["--keys-file", str(path)]
    if shared:
        prefix = request.getfixturevalue("redis_prefix")
        args += ["--redis-url", REDIS_URL, "--redis-prefix", prefix, "--frozen-time", repr(float(FROZEN))]
    with fake_server(tmp_path, *args) as a, fake_server(tmp_path, *args) as b:
        async with httpx.AsyncClient(headers=as_key("metered"), timeout=60) as client:
            assert (await client.post(f"{a.url}/v1/align", json=ALIGN)).status_code == 200
            on_b = await client.post(f"{b.url}/v1/align", json=ALIGN)
    if shared:
        assert refusal(on_b) == (429, "rate_limit_tokens_per_minute", None)
        assert on_b.headers["retry-after"] == "59"
    else:
        assert on_b.status_code == 200
