"""What a rubric judged by the served model adds to a request: latency, engine steps, tokens.

    python benchmarks/judge_latency.py --out benchmarks/results/judge/latency.json

The default model behind ``iama serve``; per prompt, the same request twice with the same seed
(so the same N candidates are generated): once weighting ``sentiment`` only, once adding a
rubric. The difference is the judge: one step of N judge prompts, submitted together.
Requests run one at a time (concurrency 1), the two arms alternating, so drift hits both.
Besides latency it reads vLLM's own counters from ``/metrics`` before and after each request:
engine steps (``vllm:iteration_tokens_total``'s count) and the requests vLLM finished, which
show the judge's N reads taking one step, not N.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RUBRIC = "answers as you would to a ten-year-old: short sentences, simple words"
STEPS = "vllm:iteration_tokens_total_count"
FINISHED = "vllm:request_success_total"
CACHE_QUERIES, CACHE_HITS = "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"


def counter(text: str, name: str) -> float:
    """Sum of a metric's samples over all label sets (vLLM labels by model and finish reason)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            total += float(line.rpartition(" ")[2])
    return total


def measure(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    before = client.get("/metrics").text
    r = client.post("/v1/align", json=body)
    r.raise_for_status()
    after = client.get("/metrics").text
    d = r.json()
    return {
        "total_s": d["timings"]["total_s"],
        "generation_s": d["timings"]["generation_s"],
        "scoring_s": d["timings"]["scoring_s"],
        "judge_tokens": d["usage"]["judge_tokens"],
        "completion_tokens": d["usage"]["completion_tokens"],
        "engine_steps": counter(after, STEPS) - counter(before, STEPS),
        "engine_requests_finished": counter(after, FINISHED) - counter(before, FINISHED),
        "prefix_cache_queries": counter(after, CACHE_QUERIES) - counter(before, CACHE_QUERIES),
        "prefix_cache_hits": counter(after, CACHE_HITS) - counter(before, CACHE_HITS),
        "chosen_index": d["chosen_index"],
        "texts": [c["text"] for c in d["candidates"]],
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    def med(k: str) -> float:
        return statistics.median(r[k] for r in rows)

    keys = ("total_s", "generation_s", "scoring_s", "judge_tokens", "engine_steps", "engine_requests_finished")
    return {k: med(k) for k in keys} | {
        "prefix_cache_queries": med("prefix_cache_queries"),
        "prefix_cache_hits": med("prefix_cache_hits"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--budget", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT / "tests"))
    from servers import start_bench_server

    lines = (ROOT / "benchmarks" / "natural_prompts.jsonl").read_text().splitlines()
    prompts = [json.loads(x)["prompt"] for x in lines if x.strip()][: args.prompts]
    base = {"budget": args.budget, "max_tokens": args.max_tokens, "temperature": 1.0, "return_candidates": True}
    arms = {
        "sentiment": {"reward_weights": {"sentiment": 1.0}},
        "sentiment+rubric": {"reward_weights": {"sentiment": 1.0, "kid": 1.0}, "rubrics": {"kid": RUBRIC}},
    }
    srv = start_bench_server(args.model, "judge-latency", {})
    rows: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    try:
        with httpx.Client(base_url=srv.url, timeout=600) as client:
            warm = {**base, **arms["sentiment+rubric"], "prompt": "Hello", "seed": 1}
            measure(client, warm)  # compile paths, fill caches
            for i, prompt in enumerate(prompts):
                order = list(arms) if i % 2 == 0 else list(reversed(arms))
                for arm in order:
                    body = {**base, **arms[arm], "prompt": prompt, "seed": 1000 + i}
                    rows[arm].append({"prompt": i, **measure(client, body)})
    finally:
        srv.stop()
    same = sum(a["texts"] == b["texts"] for a, b in zip(rows["sentiment"], rows["sentiment+rubric"], strict=True))
    plain, judged = summarise(rows["sentiment"]), summarise(rows["sentiment+rubric"])
    extra = [b["total_s"] - a["total_s"] for a, b in zip(rows["sentiment"], rows["sentiment+rubric"], strict=True)]
    share = [e / b["total_s"] for e, b in zip(extra, rows["sentiment+rubric"], strict=True)]
    steps = [
        b["engine_steps"] - a["engine_steps"] for a, b in zip(rows["sentiment"], rows["sentiment+rubric"], strict=True)
    ]
    result = {
        "command": "python benchmarks/judge_latency.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "budget": args.budget,
        "max_tokens": args.max_tokens,
        "prompts": len(prompts),
        "rubric": RUBRIC,
        "same_candidates_in_both_arms": same,
        "median": {"sentiment": plain, "sentiment+rubric": judged},
        "judge_added_s": {"median": statistics.median(extra), "min": min(extra), "max": max(extra)},
        "judge_share_of_latency": {"median": statistics.median(share), "min": min(share), "max": max(share)},
        "judge_engine_steps_added": {"median": statistics.median(steps), "min": min(steps), "max": max(steps)},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
