"""Generating the N candidates one vLLM request each, to stop weak ones early or stop sampling
once one is good enough.

Plain best-of-N sends one request with ``n = N``; vLLM seeds its i-th child ``seed + i`` (the
seed being already the request's hashed base, ``iama/seeds.py``). Here candidate i is its own
request seeded ``seed + i``, so with the same seed these candidates are
exactly plain BoN's (``test_early_rejection_off_equals_plain_bon``), only some are stopped, or
never started:

* **early rejection** (speculative rejection, Sun et al. 2024): at each checkpoint (tokens
  generated) the running candidates' partial texts are scored and the weakest are cancelled,
  which aborts them inside vLLM at once: their KV cache and batch slots free for others.
* **adaptive budget**: candidates are sampled in waves (2, 4, 8, …) until one reaches the
  target score.

Scoring is the caller's (a coroutine from texts to weighted scores); this module only decides
which candidates run.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import numpy as np

from iama.algorithms import early_rejection_keep
from iama_server.engine import Generation, GenerationEngine, GenerationResult, Logprobs, Sampling, TokenLogprob

ScoreTexts = Callable[[list[str]], Awaitable[np.ndarray]]  # texts -> (len,) weighted scores
Sink = Callable[[str], None]  # receives the sole survivor's text, piece by piece


@dataclass
class _Candidate:
    index: int
    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    prompt_tokens: int = 0
    rejected_at: int | None = None
    partial_score: float = math.nan
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: Logprobs | None = None

    @property
    def running(self) -> bool:
        return self.finish_reason is None and self.rejected_at is None


@dataclass(frozen=True)
class Checkpoint:
    tokens: int
    kept: list[int]
    rejected: list[int]


@dataclass
class EarlyRejectionRun:
    result: GenerationResult  # every candidate; a rejected one with its partial text
    rejected_at: dict[int, int]  # candidate -> tokens it had when stopped
    partial_scores: dict[int, float]  # candidate -> its score when stopped
    checkpoints: list[Checkpoint] = field(default_factory=list)


def seeded(sampling: Sampling, i: int) -> Sampling:
    """Candidate i's sampling: vLLM's seed for child i of an ``n = N`` request. The prompt's
    log-probs, when asked for, are the same for every candidate: candidate 0 computes them."""
    seed = None if sampling.seed is None else sampling.seed + i
    return replace(sampling, seed=seed, prompt_logprobs=sampling.prompt_logprobs if i == 0 else None)


def _logprobs(sampling: Sampling, c: _Candidate) -> Logprobs | None:
    return tuple(c.logprobs) if sampling.logprobs is not None else None


async def early_rejection(
    engine: GenerationEngine,
    prompt_ids: list[int],
    sampling: Sampling,
    n: int,
    request_id: str,
    checkpoints: list[int],
    keep: float,
    score: ScoreTexts | None,
    sink: Sink | None = None,
) -> EarlyRejectionRun:
    """Generate N candidates, pruning to the best ``keep`` fraction of the running ones at every
    checkpoint. ``score`` is None when none of the request's rewards can judge partial text:
    then nothing is pruned (and the caller says so).

    ``sink``: once a checkpoint leaves a single candidate that can still be chosen and it is
    still running, that candidate *is* the answer; its text so far, then every new piece, goes
    to ``sink`` as vLLM produces it (a stream's first token no longer waits for the end)."""
    cands = [_Candidate(i) for i in range(n)]
    progress = asyncio.Condition()
    failure: list[BaseException] = []
    streaming: list[_Candidate] = []  # the sole survivor, once there is one

    async def consume(c: _Candidate) -> None:
        try:
            async for d in engine.stream(prompt_ids, seeded(sampling, c.index), f"{request_id}-c{c.index}"):
                c.text += d.text
                if sink is not None and streaming and streaming[0] is c and d.text:
                    sink(d.text)
                c.tokens = d.tokens
                c.logprobs += d.logprobs
                if d.prompt_logprobs is not None:
                    c.prompt_logprobs = d.prompt_logprobs
                if d.finish_reason is not None:
                    c.finish_reason, c.prompt_tokens = d.finish_reason, d.prompt_tokens
                async with progress:
                    progress.notify_all()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the engine failed: wake the coordinator to re-raise it
            failure.append(exc)
            async with progress:
                progress.notify_all()

    def reached(cp: int) -> bool:
        """Every running candidate has ``cp`` tokens (or something failed)."""
        return bool(failure) or all(c.tokens >= cp for c in cands if c.running)

    tasks = {c.index: asyncio.create_task(consume(c)) for c in cands}
    run = EarlyRejectionRun(GenerationResult(0, []), {}, {})
    try:
        for cp in checkpoints if score is not None else []:
            async with progress:
                await progress.wait_for(functools.partial(reached, cp))
            if failure:
                raise failure[0]
            running = [c for c in cands if c.running]
            if len(running) <= 1:
                break
            assert score is not None
            scores = await score([c.text for c in running])
            kept = set(early_rejection_keep(scores, [True] * len(running), keep))
            stopped = [c for j, c in enumerate(running) if j not in kept]
            for j, c in enumerate(running):
                c.partial_score = float(scores[j])
            for c in stopped:
                c.rejected_at = c.tokens
                tasks[c.index].cancel()  # aborts the request inside vLLM
            await asyncio.gather(*(tasks[c.index] for c in stopped), return_exceptions=True)
            run.checkpoints.append(Checkpoint(cp, [running[j].index for j in sorted(kept)], [c.index for c in stopped]))
            alive = [c for c in cands if c.rejected_at is None]
            if sink is not None and len(alive) == 1 and alive[0].running:
                streaming.append(alive[0])  # no await between this and reading its text: nothing lost
                if alive[0].text:
                    sink(alive[0].text)
        await asyncio.gather(*(t for i, t in tasks.items() if cands[i].rejected_at is None))
        if failure:
            raise failure[0]
    finally:
        for t in tasks.values():
            t.cancel()  # on a timeout or a disconnect: every candidate stops with the request
    prompt_tokens = max((c.prompt_tokens for c in cands), default=0) or len(prompt_ids)
    finish = {c.index: c.finish_reason if c.rejected_at is None else "rejected" for c in cands}
    gens = [Generation(c.text, c.tokens, finish[c.index], _logprobs(sampling, c)) for c in cands]
    run.result = GenerationResult(prompt_tokens, gens, cands[0].prompt_logprobs)
    run.rejected_at = {c.index: c.rejected_at for c in cands if c.rejected_at is not None}
    run.partial_scores = {c.index: c.partial_score for c in cands if c.rejected_at is not None}
    return run


@dataclass
class AdaptiveRun:
    result: GenerationResult
    scores: np.ndarray  # (spent,) weighted score of every candidate sampled


async def adaptive_budget(
    engine: GenerationEngine,
    prompt_ids: list[int],
    sampling: Sampling,
    waves: list[int],
    request_id: str,
    target: float,
    score: ScoreTexts,
) -> AdaptiveRun:
    """Sample candidates ``0 … waves[k]−1`` wave by wave (each one request, seeded as in plain
    BoN) until some candidate's score reaches ``target`` or the last wave is done."""
    gens: list[Generation] = []
    scores = np.zeros(0)
    prompt_tokens = len(prompt_ids)
    prompt_logprobs = None
    for total in waves:
        new = range(len(gens), total)
        results = await asyncio.gather(
            *(engine.generate(prompt_ids, seeded(sampling, i), 1, f"{request_id}-c{i}") for i in new)
        )
        prompt_tokens = results[0].prompt_tokens if results else prompt_tokens
        if not gens and results:
            prompt_logprobs = results[0].prompt_logprobs
        batch = [r.candidates[0] for r in results]
        gens += batch
        scores = np.concatenate([scores, await score([g.text for g in batch])])
        if scores.size and np.nanmax(scores) >= target:
            break
    return AdaptiveRun(GenerationResult(prompt_tokens, gens, prompt_logprobs), scores)
