"""Reward scoring off the event loop, batched across concurrent requests.

Requests put their candidates on a queue; one worker drains whatever has arrived (up to
``max_batch`` completions, waiting at most ``max_wait_s`` for more) and scores them in a worker
thread with a single call per reward, over the completions of the requests that asked for that
reward only (a request weighting only ``sentiment`` never pays for another's reward model). A
neural reward model thus sees one large batch instead of many small ones, and the event loop
keeps serving while scores are computed.

A thread keeps scoring off the event loop but not off the GIL: pure-Python rule rewards (VADER,
textstat, the profanity model) hold it, and vLLM's output handling in this process waits. With
``processes`` > 0 those rewards (``PROCESS_TYPES``) score in worker processes instead, each with
its own copy of them; neural rewards (``hf:``, ``remote:``, ``relevance``) stay in the thread
(one model in memory, and their heavy work releases the GIL anyway).
``benchmarks/scoring_gil.py`` measures the event loop's lag either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from iama.rewards import Prompt, RewardSet

# Rule-based reward types: pure CPU and GIL-bound, cheap to copy into a worker process.
PROCESS_TYPES = frozenset(
    {"sentiment", "negative_sentiment", "length", "conciseness", "readability", "no_profanity", "number"}
)

_WORKER_REWARDS: RewardSet | None = None


def _init_worker(specs: dict[str, Any]) -> None:
    """A worker's own copy of the process rewards, warmed once (lexicons load on first use)."""
    global _WORKER_REWARDS
    _WORKER_REWARDS = RewardSet(specs)
    _WORKER_REWARDS.score(["warm-up"], ["warm-up"])


def _score_in_worker(prompts: list[Prompt], completions: list[str], name: str) -> np.ndarray:
    assert _WORKER_REWARDS is not None
    return _WORKER_REWARDS.score(prompts, completions, [name])[name]


@dataclass
class _Job:
    prompts: list[Prompt]
    completions: list[str]
    names: list[str]
    future: asyncio.Future[dict[str, np.ndarray]] = field(repr=False)


class BatchedScorer:
    def __init__(
        self,
        rewards: RewardSet,
        max_batch: int = 256,
        max_wait_s: float = 0.002,
        on_batch: Callable[[int], None] | None = None,
        processes: int = 0,
    ) -> None:
        self.rewards = rewards
        self.on_batch = on_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.processes = processes
        self.in_processes = {n for n, spec in rewards.specs.items() if processes > 0 and spec.type in PROCESS_TYPES}
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iama-score")
        self._procs: ProcessPoolExecutor | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run())
        if self.in_processes:
            specs = {n: self.rewards.specs[n].model_dump() for n in self.in_processes}
            self._procs = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),  # never fork a process that holds vLLM
                initializer=_init_worker,
                initargs=(specs,),
            )

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._procs is not None:
            self._procs.shutdown(wait=False, cancel_futures=True)

    async def score(
        self, prompts: Sequence[Prompt], completions: Sequence[str], names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        assert self._queue is not None, "scorer not started"
        fut: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(list(prompts), list(completions), list(names), fut))
        return await fut

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            size = len(jobs[0].completions)
            deadline = loop.time() + self.max_wait_s
            while size < self.max_batch:
                timeout = deadline - loop.time()
                try:
                    job = (
                        self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout)
                    )
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                jobs.append(job)
                size += len(job.completions)
            jobs = [j for j in jobs if not j.future.cancelled()]
            if not jobs:
                continue
            try:
                results = await loop.run_in_executor(self._pool, self._score_jobs, jobs)
            except Exception as exc:  # a broken reward fails its requests, not the server
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(sum(len(j.completions) for j in jobs))
            for j, result in zip(jobs, results, strict=True):
                if not j.future.done():
                    j.future.set_result(result)

    def _score_jobs(self, jobs: list[_Job]) -> list[dict[str, np.ndarray]]:
        """One call per reward, over the completions of the jobs that asked for it (in order);
        the process rewards' calls go to the workers first, and run while the thread scores the
        others."""
        results: list[dict[str, np.ndarray]] = [{} for _ in jobs]
        names = sorted({n for j in jobs for n in j.names})
        inputs = {}
        for name in names:
            asking = [k for k, j in enumerate(jobs) if name in j.names]
            prompts = [p for k in asking for p in jobs[k].prompts]
            comps = [c for k in asking for c in jobs[k].completions]
            inputs[name] = (asking, prompts, comps)
        procs = self._procs
        remote = {}
        if procs is not None:
            remote = {n: procs.submit(_score_in_worker, *inputs[n][1:], n) for n in names if n in self.in_processes}
        for name in names:
            asking, prompts, comps = inputs[name]
            if name in remote:
                scores = remote[name].result()
            else:
                scores = self.rewards.score(prompts, comps, [name])[name]
            start = 0
            for k in asking:
                stop = start + len(jobs[k].completions)
                results[k][name] = scores[start:stop]
                start = stop
        return results
