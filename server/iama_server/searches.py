"""Searches: generating the N candidates one vLLM request each, to stop weak ones early or to
stop sampling once one is good enough.

Plain best-of-N sends one request with ``n = N``; vLLM seeds its i-th child ``seed + i`` (the
seed being already the request's hashed base, ``iama/seeds.py``). Here candidate i is its own
request seeded ``seed + i``, so with the same seed these candidates are exactly plain BoN's
(``test_early_rejection_off_equals_plain_bon``), only some are stopped, or never started:

* **early rejection** (speculative rejection, Sun et al. 2024): at each checkpoint (tokens
  generated) the running candidates' partial texts are scored and the weakest are cancelled,
  which aborts them inside vLLM at once: their KV cache and batch slots free for others.
* **adaptive budget**: candidates are sampled in waves (2, 4, 8, …) until one reaches the
  target score.

Scoring is the caller's (a coroutine from texts to :class:`Scored`); a search decides which
candidates run and returns what it measured: every candidate, each checkpoint's decision, each
rejected candidate's partial scores, or every wave's scores.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import numpy as np

from iama.algorithms import early_rejection_keep
from iama_server.calls import EarlyRejectionPlan
from iama_server.engine import Generation, GenerationEngine, GenerationResult, Logprobs, Sampling, TokenLogprob


@dataclass(frozen=True)
class Scored:
    """Scores of a list of texts, in its order."""

    raw: dict[str, np.ndarray]  # reward -> (texts,) raw scores
    weighted: np.ndarray  # (texts,) weighted normalised score


ScoreTexts = Callable[[list[str]], Awaitable[Scored]]
Sink = Callable[[str], None]  # receives the sole survivor's text, piece by piece
OnTokens = Callable[[int], None]  # receives each new token count as vLLM produces it (every candidate)


@dataclass(frozen=True)
class Checkpoint:
    tokens: int
    kept: list[int]
    rejected: list[int]


@dataclass(frozen=True)
class Rejection:
    """A candidate stopped at a checkpoint, with the partial scores that decided."""

    tokens: int  # generated when it was stopped
    score: float  # its weighted partial score
    raw: dict[str, float]  # the judging rewards' raw scores of its partial text


@dataclass(frozen=True)
class EarlyRejectionRun:
    result: GenerationResult  # every candidate; a rejected one with its partial text
    checkpoints: list[Checkpoint]
    rejected: dict[int, Rejection]  # candidate -> why and when it stopped


@dataclass(frozen=True)
class AdaptiveRun:
    result: GenerationResult  # the candidates sampled, in order
    scores: Scored  # every one of them, from the waves that scored them


@dataclass
class _Candidate:
    index: int
    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    prompt_tokens: int = 0
    rejected: Rejection | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: Logprobs | None = None

    @property
    def running(self) -> bool:
        return self.finish_reason is None and self.rejected is None


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
    plan: EarlyRejectionPlan,
    request_id: str,
    score: ScoreTexts | None,
    sink: Sink | None = None,
    on_tokens: OnTokens | None = None,
) -> EarlyRejectionRun:
    """Start ``plan.candidates`` candidates, pruning to the best ``plan.keep`` fraction of the
    running ones at every checkpoint. ``score`` is None when none of the request's rewards can
    judge partial text: then nothing is pruned (and the caller says so).

    ``sink``: once a checkpoint leaves a single candidate that can still be chosen and it is
    still running, that candidate *is* the answer; its text so far, then every new piece, goes
    to ``sink`` as vLLM produces it (a stream's first token no longer waits for the end).

    ``on_tokens``: the tokens each candidate adds, as they come, so a stream cut short before the
    search ends is still charged what it generated (``Tally.generated_tokens``)."""
    cands = [_Candidate(i) for i in range(plan.candidates)]
    progress = asyncio.Condition()
    failure: list[BaseException] = []
    streaming: list[_Candidate] = []  # the sole survivor, once there is one

    async def consume(c: _Candidate) -> None:
        try:
            async for d in engine.stream(prompt_ids, seeded(sampling, c.index), f"{request_id}-c{c.index}"):
                c.text += d.text
                if sink is not None and streaming and streaming[0] is c and d.text:
                    sink(d.text)
                if on_tokens is not None and d.tokens > c.tokens:
                    on_tokens(d.tokens - c.tokens)
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
    checkpoints: list[Checkpoint] = []
    try:
        for cp in plan.checkpoints if score is not None else ():
            async with progress:
                await progress.wait_for(functools.partial(reached, cp))
            if failure:
                raise failure[0]
            running = [c for c in cands if c.running]
            if len(running) <= 1:
                break
            assert score is not None
            scored = await score([c.text for c in running])
            kept = set(early_rejection_keep(scored.weighted, [True] * len(running), plan.keep))
            stopped = [(j, c) for j, c in enumerate(running) if j not in kept]
            for j, c in stopped:
                raw = {name: float(values[j]) for name, values in scored.raw.items()}
                c.rejected = Rejection(c.tokens, float(scored.weighted[j]), raw)
                tasks[c.index].cancel()  # aborts the request inside vLLM
            await asyncio.gather(*(tasks[c.index] for _, c in stopped), return_exceptions=True)
            checkpoints.append(Checkpoint(cp, [running[j].index for j in sorted(kept)], [c.index for _, c in stopped]))
            alive = [c for c in cands if c.rejected is None]
            if sink is not None and len(alive) == 1 and alive[0].running:
                streaming.append(alive[0])  # no await between this and reading its text: nothing lost
                if alive[0].text:
                    sink(alive[0].text)
        await asyncio.gather(*(t for i, t in tasks.items() if cands[i].rejected is None))
        if failure:
            raise failure[0]
    finally:
        for t in tasks.values():
            t.cancel()  # on a timeout or a disconnect: every candidate stops with the request
    prompt_tokens = max((c.prompt_tokens for c in cands), default=0) or len(prompt_ids)
    gens = [
        Generation(c.text, c.tokens, c.finish_reason if c.rejected is None else "rejected", _logprobs(sampling, c))
        for c in cands
    ]
    return EarlyRejectionRun(
        GenerationResult(prompt_tokens, gens, cands[0].prompt_logprobs),
        checkpoints,
        {c.index: c.rejected for c in cands if c.rejected is not None},
    )


async def adaptive_budget(
    engine: GenerationEngine,
    prompt_ids: list[int],
    sampling: Sampling,
    waves: list[int],
    request_id: str,
    target: float,
    score: ScoreTexts,
    eligible: Callable[[Generation], bool] = lambda _: True,
) -> AdaptiveRun:
    """Sample candidates ``0 … waves[k]−1`` wave by wave (each one request, seeded as in plain
    BoN) until some ``eligible`` candidate's score reaches ``target`` (one the request's rules
    would not choose cannot end the search) or the last wave is done."""
    gens: list[Generation] = []
    scored: list[Scored] = []  # one per wave, in order
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
        scored.append(await score([g.text for g in batch]))
        # only this wave can reach the target: the earlier ones did not, or the search had stopped
        if any(eligible(g) and w >= target for g, w in zip(batch, scored[-1].weighted, strict=True)):
            break
    names = scored[0].raw if scored else {}
    every = Scored(
        {n: np.concatenate([s.raw[n] for s in scored]) for n in names},
        np.concatenate([s.weighted for s in scored]) if scored else np.zeros(0),
    )
    return AdaptiveRun(GenerationResult(prompt_tokens, gens, prompt_logprobs), every)
