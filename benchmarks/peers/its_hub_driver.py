"""its-hub's best-of-N against a ``vllm serve`` endpoint, run with its-hub's own virtual
environment's Python (``benchmarks/peers.py`` starts it as a subprocess).

its-hub pins its own dependencies, so it never shares the project's venv: this script reads a
job file (JSON: endpoint, model, sampling, N, concurrency, prompts) and writes one JSON result
(its-hub's version, each request's latency, chosen text and scores, and the wall time).

The outcome reward model wraps the project's ``sentiment`` reward (VADER compound), imported
from the repository (appended to ``sys.path``, so nothing in this venv is shadowed). its-hub's
``BestOfN.infer`` is ``asyncio.run(ainfer(...))``; ``ainfer`` is what runs here, so that
``concurrency`` requests share one event loop and one HTTP session, as an async caller would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository, for iama.rewards

from its_hub import AbstractOutcomeRewardModel, BestOfN, __version__
from its_hub.core.lms.openai_lm import OpenAICompatibleLanguageModel

from iama.rewards import create_reward


class VaderORM(AbstractOutcomeRewardModel):
    """The project's ``sentiment`` reward as an its-hub outcome reward model: each
    conversation's last message (the candidate answer) scored alone, as iama scores it."""

    def __init__(self) -> None:
        self.reward = create_reward("sentiment")

    def _texts(self, messages: Any) -> tuple[list[str], bool]:
        """(candidate texts, whether ``messages`` was a batch of conversations)."""
        batch = bool(messages) and isinstance(messages[0], list)
        conversations = messages if batch else [messages]
        texts = []
        for conv in conversations:
            last = conv[-1]
            content = last.content if hasattr(last, "content") else last.get("content")
            texts.append(content if isinstance(content, str) else "")
        return texts, batch

    def score(self, messages: Any, **kwargs: Any) -> list[float] | float:
        texts, batch = self._texts(messages)
        scores = [float(s) for s in self.reward.score([""] * len(texts), texts)]
        return scores if batch else scores[0]

    async def ascore(self, messages: Any, **kwargs: Any) -> list[float] | float:
        """What ``BestOfN.ainfer`` calls (with ``orchestrator=``, unused: VADER needs no LM)."""
        return self.score(messages)


async def run(job: dict) -> dict:
    lm = OpenAICompatibleLanguageModel(
        endpoint=job["endpoint"],
        api_key=job["api_key"],
        model_name=job["model"],
        max_completion_tokens=job["max_tokens"],
        temperature=job["temperature"],
    )
    orm = VaderORM()
    # The ORM must read the candidate (the last message), not the prompt.
    check = await orm.ascore([[{"role": "user", "content": "bad"}, {"role": "assistant", "content": "Great, thanks!"}]])
    assert isinstance(check, list) and check[0] > 0, check
    bon = BestOfN(orm)
    queue = list(reversed(job["requests"]))
    rows: list[dict] = []

    async def worker() -> None:
        while queue:
            req = queue.pop()
            t0 = time.perf_counter()
            result = await bon.ainfer(lm, req["prompt"], budget=job["n"], return_response_only=False)
            wall = time.perf_counter() - t0
            usage = result.usage
            rows.append(
                {
                    "job": req["job"],
                    "start_s": t0,
                    "latency_s": wall,
                    "text": result.the_one.get("content") or "",
                    "selected_index": result.selected_index,
                    "candidate_scores": result.scores,
                    "distinct_candidates": len({r.get("content") for r in result.responses}),
                    "usage": {
                        "prompt_tokens": usage.prompt_tokens,
                        "completion_tokens": usage.completion_tokens,
                        "calls": usage.num_calls,
                    }
                    if usage is not None
                    else None,
                }
            )

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(job["concurrency"])))
    wall = time.perf_counter() - t0
    await lm.close()
    for r in rows:
        r["start_s"] -= t0
    return {"its_hub_version": __version__, "wall_s": wall, "rows": sorted(rows, key=lambda r: r["job"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("job", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    result = asyncio.run(run(json.loads(args.job.read_text())))
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
