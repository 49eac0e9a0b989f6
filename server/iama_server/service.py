"""Running validated calls: the one entry below the routes that generates, scores and selects.

:meth:`AlignmentService.complete` owns the life of a request's calls: admission by their cost
(``admission.py``: FIFO, 429 when the queue is full), the server's timeout (504) and the
client's attention (a disconnect aborts the generation in vLLM). Streams hold their admission
slot through :meth:`AlignmentService.admitted` instead (``streaming.py``).

:meth:`AlignmentService.run` executes one call by its mode (``calls.AlignmentCall.mode``):

* ``sample``: one engine request with n = N, nothing scored (plain generation);
* ``bon``: one engine request with n = N → score every candidate with the call's model's rewards
  (the base's or an adapter's; batched across requests, ``scoring.py``) → normalise + weight
  (:func:`iama.rewards.weighted_score`) → select (:func:`iama.algorithms.select_in_tiers`: the
  request's rules, ``eligibility``, before the scores);
* ``early_rejection`` / ``adaptive``: a search (``searches.py``) that scores as it goes, then the
  same selection.

The engine's refusal of a request is a 400 here, its death a 503, and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

import numpy as np

from iama.algorithms import budget_waves, select_in_tiers, soft_best_of_n_probabilities
from iama.rewards import RewardStats, normalize_scores, weighted_score
from iama.rewards.remote import RemoteRewardError
from iama.voting import Vote, json_path_answers, plurality, regex_answers, scalar_answers
from iama_server.adapters import ServedModels
from iama_server.admission import Admission, Receive, cancel_on_disconnect_or_timeout
from iama_server.calls import AlignmentCall, total_cost
from iama_server.eligibility import candidate_tiers, rules_apply
from iama_server.engine import Delta, Generation, GenerationEngine, GenerationResult, InvalidEngineInput
from iama_server.errors import APIError, ClientGone, ErrorCode
from iama_server.judging import EngineJudge
from iama_server.lifecycle import ENGINE_DIED, Lifecycle
from iama_server.limits import Limiter, LimitExceeded, limit_error
from iama_server.metrics import Metrics
from iama_server.outcome import Outcome, Search
from iama_server.searches import OnTokens, Scored, Sink, adaptive_budget, early_rejection
from iama_server.settings import ServerSettings

log = logging.getLogger("iama.server")
T = TypeVar("T")


@dataclass
class Admitted:
    """What an admitted request holds: its cost, the seconds it queued, and the tokens its key
    is charged when it ends (the whole cost unless the caller knows better)."""

    cost: int
    queue_s: float = 0.0
    spent_tokens: int = -1

    def __post_init__(self) -> None:
        if self.spent_tokens < 0:
            self.spent_tokens = self.cost


@dataclass
class _Spend:
    """What one call spent beyond its generation: the judge's prompt tokens (every wave's)."""

    judge_tokens: int = 0


class AlignmentService:
    """Admission, generation, scoring and selection for validated calls (module docstring)."""

    def __init__(
        self,
        engine: GenerationEngine,
        models: ServedModels,
        admission: Admission,
        settings: ServerSettings,
        metrics: Metrics,
        lifecycle: Lifecycle,
        judge: EngineJudge,
        limiter: Limiter,
    ) -> None:
        self.engine, self.models, self.admission = engine, models, admission
        self.judge, self.limiter = judge, limiter
        self.settings, self.metrics, self.lifecycle = settings, metrics, lifecycle

    # ------------------------------------------------------------------ a request's life
    async def complete(self, calls: list[AlignmentCall], receive: Receive) -> list[Outcome]:
        """Admission by the calls' cost over all their prompts (429 when the queue is full), then
        the calls side by side under the request timeout (504) and the client's attention (a
        disconnect aborts them in vLLM: :class:`ClientGone`)."""
        async with self.admitted(calls) as held:

            async def run_all() -> list[Outcome]:
                tasks = [asyncio.ensure_future(self.run(call)) for call in calls]
                try:
                    return list(await asyncio.gather(*tasks))
                finally:  # one prompt failed (or the request ended): its siblings stop generating too
                    for task in tasks:
                        task.cancel()

            outcomes = await self._watched(run_all(), receive, calls[0].request_id)
            held.spent_tokens = sum(o.spent_tokens for o in outcomes)
        return [replace(o, queue_s=held.queue_s) for o in outcomes]

    @asynccontextmanager
    async def admitted(self, calls: list[AlignmentCall]) -> AsyncIterator[Admitted]:
        """Hold the calls' place while inside: their key's limits first (a window or its
        concurrency full is a 429 with Retry-After, before the request queues), then an
        admission slot in the key's priority class. Yields what the request holds; its
        ``spent_tokens`` (set by the caller once known) are what the key is charged in the end,
        the admission cost until then. An adapter the calls run through is counted as in use
        from here to the end (``adapters.ServedModels.using``: unloading it waits for them)."""
        key, cost = calls[0].key, total_cost(calls)
        with self.models.using([c.model for c in calls]):  # before any await: a drain never misses it
            try:
                lease = await self.limiter.acquire(key.name, key.limits, cost)
            except LimitExceeded as exc:
                status, message, code, headers = limit_error(exc)
                raise APIError(status, f"key {key.name!r}: {message}", code=ErrorCode(code), headers=headers) from None
            held, ran = Admitted(cost), False
            try:
                async with self.admission.slot(cost, key.scheduling_priority) as queued:
                    held.queue_s, ran = queued, True
                    yield held
            finally:  # refused by the queue (429) or gone while queued: nothing ran, nothing charged
                await self.limiter.release(lease, held.spent_tokens if ran else 0)

    async def _watched(self, coro: Coroutine[Any, Any, T], receive: Receive, request_id: str) -> T:
        try:
            return await cancel_on_disconnect_or_timeout(coro, receive, self.settings.request_timeout_s)
        except ClientGone:
            self.cancelled("disconnect", request_id)
            raise
        except APIError as exc:
            if exc.code == ErrorCode.TIMEOUT:
                self.cancelled("timeout", request_id)
            raise

    def cancelled(self, reason: Literal["disconnect", "timeout"], request_id: str, *, stream: bool = False) -> None:
        """A request's generation was aborted: the client went away, or the timeout passed."""
        self.metrics.cancelled.labels(reason).inc()
        if reason == "disconnect":
            log.info("request %s: client went away%s; generation aborted", request_id, " mid-stream" if stream else "")
        elif stream:
            log.info("request %s: stream stopped at the server's timeout", request_id)
        else:
            log.info("request %s: timed out; generation aborted", request_id)

    # ------------------------------------------------------------------ one call
    async def run(self, call: AlignmentCall, sink: Sink | None = None, on_tokens: OnTokens | None = None) -> Outcome:
        """``sink`` (early rejection only) receives the answer's text as it is generated, once a
        checkpoint has left one candidate, and ``on_tokens`` every candidate's new tokens as they
        come (``searches.early_rejection``)."""
        self.metrics.budget.observe(call.budget)
        t0 = time.perf_counter()
        search, scored, spend = Search(), None, _Spend()
        with self._engine_errors():
            if call.mode == "early_rejection":
                gen, search = await self._early_rejection(call, sink, on_tokens)
            elif call.mode == "adaptive":
                gen, search, scored = await self._adaptive(call, spend)
            else:
                gen = await self.engine.generate(call.prompt_ids, call.sampling, call.budget, call.engine_request_id())
        t1 = time.perf_counter()
        self.metrics.generation.observe(t1 - t0)
        self.metrics.tokens.labels("prompt").inc(gen.prompt_tokens)
        self.metrics.tokens.labels("completion").inc(sum(c.token_count for c in gen.candidates))
        eligible, vote = None, None
        if call.weights is None:
            scored, normalized, chosen = None, {}, list(range(min(call.n_returned, len(gen.candidates))))
        else:
            if scored is None:  # None unless the adaptive search scored every whole candidate as it went
                with self._engine_errors():  # rubrics are judged by the engine
                    scored = await self._final_scores(call, gen, search, spend)
            normalized = normalize_scores(scored.raw, self._stats(call))
            chosen, eligible, vote = self._select(call, gen.candidates, scored, search)
        t2 = time.perf_counter()
        self.metrics.scoring.observe(t2 - t1)
        raw, weighted = (scored.raw, scored.weighted) if scored is not None else ({}, None)
        return Outcome(
            call, gen, raw, normalized, weighted, chosen, t1 - t0, t2 - t1, search=search, eligible=eligible, vote=vote,
            judge_tokens=spend.judge_tokens,
        )  # fmt: skip

    def _select(
        self, call: AlignmentCall, candidates: Sequence[Generation], scored: Scored, search: Search
    ) -> tuple[list[int], int | None, Vote | None]:
        """The chosen candidates, the request's rules first (``eligibility``: valid format,
        finished), then the call's algorithm; a rejected candidate is never chosen. Also how
        many candidates the rules allowed (None where the request has none), and the vote."""
        weighted = scored.weighted.copy()
        weighted[list(search.rejected)] = np.nan
        structured = call.sampling.structured
        tiers = np.asarray(candidate_tiers(candidates, structured, call.prefer_finished))
        allowed = (tiers == 0) & ~np.isnan(weighted)
        eligible = int(allowed.sum()) if rules_apply(structured, call.prefer_finished) else None
        if call.algorithm == "vote":
            vote = self._vote(call, candidates, weighted, tiers)
            return [vote.chosen], eligible, vote
        k = min(call.n_returned, len(candidates) - len(search.rejected))
        return select_in_tiers(weighted, tiers, call.algorithm, k, call.tau, call.sampling.seed), eligible, None

    def _vote(
        self, call: AlignmentCall, candidates: Sequence[Generation], weighted: np.ndarray, tiers: np.ndarray
    ) -> Vote:
        """Only the best tier present votes (the request's rules come before the crowd too);
        weighted votes count each voter's soft-BoN probability at the call's τ."""
        assert call.vote is not None
        spec, texts = call.vote, [c.text for c in candidates]
        if spec.regex is not None:
            answers = regex_answers(texts, spec.regex)
        elif spec.json_path is not None:
            answers = json_path_answers(texts, spec.json_path)
        else:
            assert spec.reward is not None
            reader = call.model.rewards.scalar_rewards()[spec.reward]
            answers = scalar_answers(reader.scalar(texts, [c.token_count for c in candidates]))
        scored = ~np.isnan(weighted)
        best = tiers[scored].min() if scored.any() else 0
        voters = np.where(scored & (tiers == best), weighted, np.nan)
        probs = soft_best_of_n_probabilities(voters, call.tau) if spec.weighted and scored.any() else None
        return plurality(answers, voters, probs)

    def _stats(self, call: AlignmentCall) -> Mapping[str, RewardStats] | None:
        return call.model.rewards.stats if call.normalize else None

    async def _raw_scores(
        self, call: AlignmentCall, texts: list[str], names: list[str], spend: _Spend | None
    ) -> dict[str, np.ndarray]:
        """Raw scores of ``texts`` over the rewards ``names``: the rubrics by the engine's judge
        (one round for all of them), the others by the scorer (batched across requests), side
        by side."""
        rubrics = {n: call.rubrics[n] for n in names if n in call.rubrics}
        others = [n for n in names if n not in rubrics]

        async def judged() -> dict[str, np.ndarray]:
            if not rubrics:
                return {}
            scores, tokens = await self.judge.score(
                call.prompt, texts, rubrics, call.request_id, call.sampling.priority, call.sampling.adapter
            )
            self.metrics.tokens.labels("judge").inc(tokens)
            if spend is not None:
                spend.judge_tokens += tokens
            return scores

        async def scored() -> dict[str, np.ndarray]:
            if not others:
                return {}
            try:
                return await call.model.scorer.score([call.prompt] * len(texts), texts, others)
            except RemoteRewardError as exc:  # its server's address stays in the log, not in the answer
                log.warning("request %s: %s", call.request_id, exc)
                raise APIError(
                    502,
                    "a remote reward or judge server failed; this request was not scored",
                    code=ErrorCode.UPSTREAM_ERROR,
                ) from None

        by_judge, by_scorer = await asyncio.gather(judged(), scored())
        return {n: (by_judge[n] if n in by_judge else by_scorer[n]) for n in names}

    async def _score(self, call: AlignmentCall, texts: list[str], names: list[str], spend: _Spend | None) -> Scored:
        """Raw scores of ``texts`` and their weighted score: the one formula,
        :func:`iama.rewards.weighted_score`."""
        assert call.weights is not None
        raw = await self._raw_scores(call, texts, names, spend)
        return Scored(raw, weighted_score(raw, {n: call.weights[n] for n in names}, self._stats(call)))

    async def _final_scores(self, call: AlignmentCall, gen: GenerationResult, search: Search, spend: _Spend) -> Scored:
        """Scores of the finished candidates; a candidate stopped by early rejection is not
        scored again: it keeps the judges' scores of the partial text that decided (NaN for the
        rewards that could not judge it, which are never shown for it)."""
        assert call.weights is not None
        names = list(call.weights)
        texts = [c.text for c in gen.candidates]
        if not search.rejected:
            return await self._score(call, texts, names, spend)
        live = [i for i in range(len(texts)) if i not in search.rejected]
        scored = await self._raw_scores(call, [texts[i] for i in live], names, spend)
        raw = {n: np.full(len(texts), np.nan) for n in names}
        for n in names:
            raw[n][live] = scored[n]
        for i, rejection in search.rejected.items():
            for n, v in rejection.raw.items():
                raw[n][i] = v
        return Scored(raw, weighted_score(raw, call.weights, self._stats(call)))

    async def _early_rejection(
        self, call: AlignmentCall, sink: Sink | None, on_tokens: OnTokens | None
    ) -> tuple[GenerationResult, Search]:
        assert call.early_rejection is not None and call.weights is not None
        weights = call.weights
        installed = [n for n in weights if n not in call.rubrics]
        judges = [n for n in call.model.rewards.judging_partial_text(installed) if weights[n] > 0]

        async def score(texts: list[str]) -> Scored:
            return await self._score(call, texts, judges, None)

        plan = call.early_rejection
        run = await early_rejection(
            self.engine,
            call.prompt_ids,
            call.sampling,
            plan,
            call.engine_request_id(),
            score if judges else None,
            sink if call.n_returned == 1 else None,
            on_tokens,
        )
        self.metrics.candidates_aborted.inc(len(run.rejected))
        self.metrics.tokens_saved.inc(sum(call.sampling.max_tokens - r.tokens for r in run.rejected.values()))
        return run.result, Search(rejected=run.rejected, checkpoints=run.checkpoints, partial_rewards=judges)

    async def _adaptive(self, call: AlignmentCall, spend: _Spend) -> tuple[GenerationResult, Search, Scored]:
        assert call.target_score is not None and call.weights is not None
        names = list(call.weights)

        async def score(texts: list[str]) -> Scored:
            return await self._score(call, texts, names, spend)

        waves = budget_waves(call.budget)
        structured, prefer = call.sampling.structured, call.prefer_finished
        run = await adaptive_budget(
            self.engine, call.prompt_ids, call.sampling, waves, call.engine_request_id(), call.target_score, score,
            lambda g: candidate_tiers([g], structured, prefer) == [0],
        )  # fmt: skip
        spent = len(run.result.candidates)
        self.metrics.budget_spent.observe(spent)
        return run.result, Search(budget_spent=spent), run.scores

    async def stream(self, call: AlignmentCall) -> AsyncGenerator[Delta, None]:
        """Plain generation (nothing to score or select), token by token as vLLM produces it."""
        self.metrics.budget.observe(1)
        deltas = self.engine.stream(call.prompt_ids, call.sampling, call.engine_request_id())
        with self._engine_errors():
            async with contextlib.aclosing(deltas):  # closing the stream aborts the request in vLLM at once
                async for delta in deltas:
                    if delta.finish_reason is not None:
                        self.metrics.tokens.labels("prompt").inc(delta.prompt_tokens)
                        self.metrics.tokens.labels("completion").inc(delta.tokens)
                    yield delta

    @contextmanager
    def _engine_errors(self) -> Iterator[None]:
        """The engine refusing a request is the client's mistake (400); an engine that died is
        fatal for the process, and a 503 (retry elsewhere) for the client."""
        try:
            yield
        except InvalidEngineInput as exc:
            raise APIError(400, f"the engine refused the request: {exc}", exc.param) from None
        except APIError:
            raise
        except Exception:
            if self.engine.ready:
                raise
            # vLLM's EngineDeadError
            self.lifecycle.fail(ENGINE_DIED)
            raise APIError(503, ENGINE_DIED, code=ErrorCode.NOT_READY, headers={"Retry-After": "5"}) from None
