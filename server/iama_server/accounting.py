"""Who used what: one usage row per request that reached a route (answered, failed or cancelled)
and the per-key Prometheus counters.

The row is written before the response is sent (:meth:`Accounting.record` awaits the store's
commit in a worker thread), so a server killed right after answering has the row on disk; a
store that cannot write turns the answer into a 503 rather than answering without a record.
Per-key counters are labelled by the key's *name*, which comes from the keys file (or
``key-N`` / ``anonymous``): bounded by configuration, never by what a client sends, and never
the secret.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from iama_server.calls import AlignmentCall
from iama_server.errors import APIError, ClientGone, ErrorCode
from iama_server.keys import KeyPolicy
from iama_server.metrics import Metrics
from iama_server.outcome import Outcome
from iama_server.usage import UsageRow, UsageStore

log = logging.getLogger("iama.server")

CLIENT_GONE = 499  # nginx's status for a client that closed the connection: no answer was sent


def outcome_of(status: int) -> str:
    return "ok" if status < 400 else "cancelled" if status == CLIENT_GONE else "error"


@dataclass
class Tally:
    """What a route learns of its request as it runs, for the usage row written at its end."""

    key: KeyPolicy
    route: str
    model: str
    request_id: str
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    calls: list[AlignmentCall] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    generated_tokens: int | None = None  # a live stream's count, where there is no outcome
    queue_s: float = 0.0
    streaming: bool = False  # a live stream records when its body ends, not when the route returns

    def spent_tokens(self) -> int | None:
        """What the request used of the engine once known (None: nothing known yet): its
        outcomes' tokens, or a live stream's prompt and the tokens it generated."""
        if self.outcomes:
            return sum(o.spent_tokens for o in self.outcomes)
        if self.generated_tokens is not None:
            return sum(len(c.prompt_ids) for c in self.calls) + self.generated_tokens
        return None


class Accounting:
    def __init__(self, store: UsageStore | None, metrics: Metrics) -> None:
        self.store, self.metrics = store, metrics
        self._writer: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """One writer thread per app lifespan: commits are serial anyway (SQLite has one
        writer), and one thread keeps one connection warm instead of a pool's worth."""
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="iama-usage")

    @asynccontextmanager
    async def recorded(self, key: KeyPolicy, route: str, model: str, request_id: str) -> AsyncIterator[Tally]:
        """The route's body runs inside; its usage is recorded as it leaves (its status: 200,
        the error's, or 499 for a client that went away), unless it handed a live stream the
        job (``Tally.streaming``: :meth:`finish` at the stream's end)."""
        tally = Tally(key, route, model, request_id)
        status = 200
        try:
            yield tally
        except APIError as exc:
            status = exc.status
            raise
        except ClientGone:
            status = CLIENT_GONE
            raise
        except Exception:
            status = 500
            raise
        finally:
            if not tally.streaming or status != 200:
                await self.finish(tally, status)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)  # rows being written are written
            self._writer = None

    async def finish(self, tally: Tally, status: int) -> None:
        await self.record(
            key=tally.key, route=tally.route, model=tally.model, request_id=tally.request_id, status=status,
            started_at=tally.started_at, calls=tally.calls, outcomes=tally.outcomes,
            generated_tokens=tally.generated_tokens, queue_s=tally.queue_s,
        )  # fmt: skip

    async def record(
        self,
        *,
        key: KeyPolicy,
        route: str,
        model: str,
        request_id: str,
        status: int,
        started_at: datetime,
        calls: Sequence[AlignmentCall] = (),
        outcomes: Sequence[Outcome] = (),
        generated_tokens: int | None = None,
        queue_s: float = 0.0,
    ) -> None:
        """Count and store one request's usage. ``calls`` and ``outcomes`` are what is known of
        it (none for a request refused before its calls were built); a live stream passes the
        tokens it generated so far as ``generated_tokens``, used only where no outcome says more
        (a search streamed to its end has both: its outcome counts, as ``Tally.spent_tokens``)."""
        first = calls[0] if calls else None
        generated = sum(o.completion_tokens for o in outcomes) if outcomes else (generated_tokens or 0)
        prompt = sum(o.generation.prompt_tokens for o in outcomes) or sum(len(c.prompt_ids) for c in calls)
        judge = sum(o.judge_tokens for o in outcomes)
        row = UsageRow(
            key_name=key.name,
            model=model,
            route=route,
            request_id=request_id,
            status=status,
            outcome=outcome_of(status),  # type: ignore[arg-type]
            started_at=started_at,
            finished_at=datetime.now(UTC),
            algorithm=None if first is None else (first.algorithm if first.weights is not None else "sample"),
            budget=None if first is None else first.budget,
            candidates_started=sum(len(o.generation.candidates) for o in outcomes),
            prompt_tokens=prompt if outcomes or generated_tokens is not None else 0,
            generated_tokens=generated,
            judge_tokens=judge,
            reward_calls=sum(len(o.raw) for o in outcomes if o.weighted is not None),
            judge_calls=sum(len(o.call.rubrics) for o in outcomes if o.judge_tokens),
            queue_s=queue_s,
        )
        self.metrics.key_requests.labels(key.name, str(status)).inc()
        for kind, n in (("prompt", row.prompt_tokens), ("completion", row.generated_tokens), ("judge", judge)):
            if n:
                self.metrics.key_tokens.labels(key.name, kind).inc(n)
        if self.store is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._writer, self.store.record, row
            )  # None: a fresh thread
        except Exception as exc:  # the database: down, full, refusing
            log.error("request %s: usage not recorded: %s: %s", request_id, type(exc).__name__, str(exc)[:300])
            raise APIError(
                503, "usage could not be recorded, so the answer is withheld; retry", code=ErrorCode.NOT_READY,
                headers={"Retry-After": "5"},
            ) from None  # fmt: skip
