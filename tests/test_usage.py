"""Usage rows (iama_server.usage) on both stores, SQLite in tmp_path and PostgreSQL at
127.0.0.1:5432 (database ``test``, each test its own table, dropped afterwards): rows read back as
written, totals and their groups equal sums computed by hand, and a killed writer loses no row it
had committed.

PostgreSQL sessions run in Asia/Tokyo, so grouping by day shows it uses the UTC date whatever the
session's time zone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from iama_server.usage import Totals, UsageRow, UsageStore

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TOKYO_SESSION = "?options=-c%20timezone%3DAsia%2FTokyo"
PLUS_9 = timezone(timedelta(hours=9))
MINUS_5 = timezone(timedelta(hours=-5))


def open_store(kind: str, tmp_path: Path) -> Iterator[UsageStore]:
    table = f"usage_test_{uuid.uuid4().hex[:12]}"
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    else:
        import psycopg

        try:
            psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=1).close()
        except psycopg.Error as exc:
            pytest.skip(f"no PostgreSQL at 127.0.0.1:5432/test ({str(exc).strip().splitlines()[0]})")
        url = POSTGRES_URL + TOKYO_SESSION
    store = UsageStore(url, table=table)
    store.create()
    yield store
    store.table.drop(store.engine, checkfirst=True)
    store.dispose()


@pytest.fixture(
    params=[pytest.param("sqlite", marks=pytest.mark.inprocess), pytest.param("postgresql", marks=pytest.mark.tools)]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UsageStore]:
    yield from open_store(request.param, tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_for_a_second_process(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UsageStore]:
    """The same stores, for tests marked ``tools`` (a second process)."""
    yield from open_store(request.param, tmp_path)


def row(
    key: str,
    model: str,
    route: str,
    finished_at: datetime,
    prompt: int,
    generated: int,
    judge: int,
    candidates: int,
    **more: object,
) -> UsageRow:
    status = more.pop("status", 200)
    assert isinstance(status, int)
    fields: dict[str, object] = {
        "request_id": f"req-{uuid.uuid4().hex[:8]}",
        "status": status,
        "outcome": {200: "ok", 499: "cancelled"}.get(status, "error"),
        "algorithm": "bon",
        "budget": max(candidates, 1),
        **more,
    }
    return UsageRow(
        key_name=key,
        model=model,
        route=route,
        started_at=finished_at - timedelta(seconds=2),
        finished_at=finished_at,
        prompt_tokens=prompt,
        generated_tokens=generated,
        judge_tokens=judge,
        candidates_started=candidates,
        **fields,  # type: ignore[arg-type]
    )


# Five requests around two UTC midnights, written in three time zones.
ROWS = [
    row("acme", "base", "/v1/align", datetime(2024, 3, 2, 8, 30, tzinfo=PLUS_9), 10, 100, 0, 4),  # 03-01 23:30Z
    row("acme", "base", "/v1/chat/completions", datetime(2024, 3, 1, 19, 10, tzinfo=MINUS_5), 20, 200, 30, 8),
    row("globex", "adapter-g", "/v1/align", datetime(2024, 3, 2, 12, tzinfo=UTC), 5, 40, 0, 2, status=504),
    row("globex", "base", "/v1/completions", datetime(2024, 3, 3, tzinfo=UTC), 7, 0, 0, 0, status=400, budget=None),
    row(
        "acme",
        "adapter-a",
        "/v1/align",
        datetime(2024, 3, 2, 23, 59, 59, 500_000, tzinfo=UTC),
        1,
        16,
        4,
        1,
        status=499,
        reward_calls=3,
        judge_calls=1,
        queue_s=0.25,
    ),
]


def sums(group: str | None, requests: int, prompt: int, generated: int, judge: int, candidates: int) -> Totals:
    return Totals(group, requests, prompt, generated, judge, candidates)


def by_group(totals: list[Totals]) -> dict[str | None, Totals]:
    return {t.group: t for t in totals}


@pytest.mark.inprocess
def test_the_table_has_one_column_per_row_field(tmp_path: Path):
    store = UsageStore(f"sqlite:///{tmp_path / 'u.sqlite3'}")
    assert {c.name for c in store.table.c} - {"id"} == {f.name for f in dataclasses.fields(UsageRow)}


@pytest.mark.inprocess
def test_a_row_must_be_timezone_aware_and_well_formed():
    good = ROWS[0]
    with pytest.raises(ValueError, match="started_at must be timezone-aware"):
        dataclasses.replace(good, started_at=datetime(2024, 3, 1))
    with pytest.raises(ValueError, match="outcome must be ok, error or cancelled"):
        dataclasses.replace(good, outcome="timeout")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prompt_tokens must be >= 0"):
        dataclasses.replace(good, prompt_tokens=-1)


def test_a_recorded_row_reads_back_as_written_with_its_times_in_utc(store: UsageStore):
    store.create()  # a second time: idempotent
    for r in ROWS:
        store.record(r)
    with store.engine.connect() as conn:
        stored = conn.execute(select(store.table).order_by(store.table.c.id)).mappings().all()
    assert len(stored) == len(ROWS)
    for written, read in zip(ROWS, stored, strict=True):
        # Aware datetimes compare as instants: +09:00 written, UTC read.
        assert {k: read[k] for k in dataclasses.asdict(written)} == dataclasses.asdict(written)
        assert read["finished_at"].utcoffset() == timedelta(0)
    assert stored[0]["finished_at"] == datetime(2024, 3, 1, 23, 30, tzinfo=UTC)


def test_totals_and_their_groups_equal_the_sums_by_hand(store: UsageStore):
    for r in ROWS:
        store.record(r)
    assert store.totals() == [sums(None, 5, 43, 356, 34, 15)]
    assert by_group(store.totals(group_by="key")) == {
        "acme": sums("acme", 3, 31, 316, 34, 13),
        "globex": sums("globex", 2, 12, 40, 0, 2),
    }
    assert by_group(store.totals(group_by="model")) == {
        "adapter-a": sums("adapter-a", 1, 1, 16, 4, 1),
        "adapter-g": sums("adapter-g", 1, 5, 40, 0, 2),
        "base": sums("base", 3, 37, 300, 30, 12),
    }
    assert by_group(store.totals(group_by="route")) == {
        "/v1/align": sums("/v1/align", 3, 16, 156, 4, 7),
        "/v1/chat/completions": sums("/v1/chat/completions", 1, 20, 200, 30, 8),
        "/v1/completions": sums("/v1/completions", 1, 7, 0, 0, 0),
    }
    # UTC days of the finish: 08:30+09:00 is still March 1st, 19:10-05:00 already March 2nd.
    assert store.totals(group_by="day") == [
        sums("2024-03-01", 1, 10, 100, 0, 4),
        sums("2024-03-02", 3, 26, 256, 34, 11),
        sums("2024-03-03", 1, 7, 0, 0, 0),
    ]


def test_totals_filter_by_key_and_a_half_open_period(store: UsageStore):
    for r in ROWS:
        store.record(r)
    march_2 = datetime(2024, 3, 2, tzinfo=UTC)
    march_3 = datetime(2024, 3, 3, 9, tzinfo=PLUS_9)  # the same instant as 2024-03-03 00:00Z
    assert store.totals(key="acme", since=march_2, until=march_3) == [sums(None, 2, 21, 216, 34, 9)]
    assert store.totals(until=march_3) == [sums(None, 4, 36, 356, 34, 15)]  # until excludes 00:00Z
    assert store.totals(since=march_3) == [sums(None, 1, 7, 0, 0, 0)]  # since includes it
    assert store.totals(key="acme", group_by="day") == [
        sums("2024-03-01", 1, 10, 100, 0, 4),
        sums("2024-03-02", 2, 21, 216, 34, 9),
    ]


def test_totals_of_no_rows_are_zeros_and_no_groups(store: UsageStore):
    assert store.totals() == [sums(None, 0, 0, 0, 0, 0)]
    assert store.totals(group_by="day") == []
    store.record(ROWS[0])
    assert store.totals(key="nobody") == [sums(None, 0, 0, 0, 0, 0)]


# --- a second process, killed ----------------------------------------------------------------

WRITER = """
import sys
from datetime import UTC, datetime
from iama_server.usage import UsageRow, UsageStore

url, table, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = UsageStore(url, table=table)
i = 0
while n == 0 or i < n:  # 0: until killed
    now = datetime.now(UTC)
    store.record(UsageRow(key_name="acme", model="base", route="/v1/align", request_id=f"req-{i}", status=200,
                          outcome="ok", started_at=now, finished_at=now, prompt_tokens=1))
    print(f"req-{i}", flush=True)  # after the commit: the server answers only now
    i += 1
sys.stdin.readline()  # hold the open connections until killed
"""


async def writer(store: UsageStore, n: int) -> asyncio.subprocess.Process:
    url = store.engine.url.render_as_string(hide_password=False)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, url, store.table.name, str(n),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def committed(proc: asyncio.subprocess.Process, n: int, ceiling_s: float = 120.0) -> list[str]:
    """The writer's first ``n`` lines: the request ids it reported committed."""
    assert proc.stdout is not None
    ids = []
    for _ in range(n):
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), ceiling_s)
        except TimeoutError:
            raise AssertionError(f"the writer reported {len(ids)} of {n} commits within {ceiling_s:g} s") from None
        assert line, f"the writer exited after {len(ids)} of {n} commits"
        ids.append(line.decode().strip())
    return ids


async def kill_9(proc: asyncio.subprocess.Process) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    await asyncio.wait_for(proc.wait(), 60)
    assert proc.returncode == -signal.SIGKILL


def stored_ids(store: UsageStore) -> list[str]:
    """The rows as a freshly opened store (a restarted server) reads them."""
    reopened = UsageStore(store.engine.url.render_as_string(hide_password=False), table=store.table.name)
    try:
        with reopened.engine.connect() as conn:
            return list(conn.execute(select(reopened.table.c.request_id).order_by(reopened.table.c.id)).scalars())
    finally:
        reopened.dispose()


@pytest.mark.tools
async def test_a_killed_writer_loses_no_row_it_reported_committed(store_for_a_second_process: UsageStore):
    store = store_for_a_second_process
    proc = await writer(store, 5)
    try:
        ids = await committed(proc, 5)
    finally:
        await kill_9(proc)
    assert ids == [f"req-{i}" for i in range(5)]
    assert stored_ids(store) == ids


@pytest.mark.tools
async def test_a_writer_killed_mid_stream_keeps_every_reported_row(store_for_a_second_process: UsageStore):
    """Killed between any two instructions: every row it reported is there, and at most one more
    (committed, not yet reported)."""
    store = store_for_a_second_process
    proc = await writer(store, 0)
    try:
        await committed(proc, 3)
    finally:
        await kill_9(proc)
    assert proc.stdout is not None
    reported = [f"req-{i}" for i in range(len((await proc.stdout.read()).split()) + 3)]
    rows = stored_ids(store)
    assert rows[: len(reported)] == reported
    assert len(rows) - len(reported) in (0, 1)
