"""How much the rule-based rewards hold up the server's event loop: scoring thread vs processes.

The server's event loop also runs vLLM's output handling (AsyncLLM's output processor and every
stream's tokens). Scoring runs in a thread, off the loop, but pure-Python rewards hold the GIL,
so the loop waits its turn. This measures the loop's lag (how late a 1 ms timer fires) while
the server's real ``BatchedScorer`` scores a burst of completions with VADER sentiment, textstat
readability and the profanity model, with ``score_processes`` 0 (the thread) and 2.

    .venv/bin/python benchmarks/scoring_gil.py     # writes benchmarks/results/scoring_gil/results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np

from iama.rewards import RewardSet
from iama_server.scoring import BatchedScorer

ROOT = Path(__file__).resolve().parent.parent
REWARDS = {"sentiment": "sentiment", "readability": "readability", "no_profanity": "no_profanity"}
WORDS = (
    "the quick brown fox jumps over a lazy dog while happy people sing about wonderful sunny days and "
    "terrible broken machines tell sad stories of reinforcement learning from human feedback"
).split()


def completions(n: int, words: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=words)) + "." for _ in range(n)]


async def measure(processes: int, jobs: int, per_job: int, words: int) -> dict[str, float]:
    scorer = BatchedScorer(RewardSet(REWARDS), max_batch=per_job, processes=processes)
    scorer.start()
    texts = completions(jobs * per_job, words, seed=0)
    # warm: workers spawned and their lexicons loaded, the thread's rewards loaded
    await scorer.score(["q"] * 4, texts[:4], list(REWARDS))
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - t - 0.001)

    tick = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    await asyncio.gather(
        *(scorer.score(["q"] * per_job, texts[k * per_job : (k + 1) * per_job], list(REWARDS)) for k in range(jobs))
    )
    wall = time.perf_counter() - t0
    done.set()
    await tick
    await scorer.stop()
    ms = np.asarray(lags) * 1000
    return {
        "score_processes": processes,
        "completions": jobs * per_job,
        "scoring_wall_s": round(wall, 3),
        "loop_lag_ms_p50": round(float(np.percentile(ms, 50)), 2),
        "loop_lag_ms_p99": round(float(np.percentile(ms, 99)), 2),
        "loop_lag_ms_max": round(float(ms.max()), 2),
        "ticks": len(lags),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--per-job", type=int, default=128)
    ap.add_argument("--words", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scoring_gil" / "results.json")
    args = ap.parse_args()
    runs = []
    for rep in range(args.repeats):  # interleaved, so drift in the machine's load hits both alike
        for processes in (0, 2):
            r = asyncio.run(measure(processes, args.jobs, args.per_job, args.words))
            r["repeat"] = rep
            runs.append(r)
            print(json.dumps(r), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
