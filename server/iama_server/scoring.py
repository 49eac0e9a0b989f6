"""Reward scoring off the event loop, batched across concurrent requests.

Requests put their candidates on a queue; one worker drains whatever has arrived (up to
``max_batch`` completions, waiting at most ``max_wait_s`` for more) and scores them in a worker
thread with a single call per reward, over the completions of the requests that asked for that
reward only (a request weighting only ``sentiment`` never pays for another's reward model). A
neural reward model thus sees one large batch instead of many small ones, and the event loop
keeps serving while scores are computed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from iama.rewards import Prompt, RewardSet


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
    ) -> None:
        self.rewards = rewards
        self.on_batch = on_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iama-score")

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._pool.shutdown(wait=False, cancel_futures=True)

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
        """One call per reward, over the completions of the jobs that asked for it (in order)."""
        results: list[dict[str, np.ndarray]] = [{} for _ in jobs]
        for name in sorted({n for j in jobs for n in j.names}):
            asking = [k for k, j in enumerate(jobs) if name in j.names]
            prompts = [p for k in asking for p in jobs[k].prompts]
            comps = [c for k in asking for c in jobs[k].completions]
            scores = self.rewards.score(prompts, comps, [name])[name]
            start = 0
            for k in asking:
                stop = start + len(jobs[k].completions)
                results[k][name] = scores[start:stop]
                start = stop
        return results
