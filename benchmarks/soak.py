"""A bounded soak: mixed valid, invalid and cancelled requests at twice the server's capacity.

    python benchmarks/soak.py --minutes 10 --out benchmarks/results/soak/soak.json

Starts ``iama serve`` (default model, an API key, ``--running`` generating + ``--queued``
waiting) and runs 2 × (running + queued) client loops for ``--minutes``. Each loop draws a
request: a valid ``/v1/align`` (budget 2-8), a valid OpenAI chat completion, an invalid body
(bad weight, budget, seed 2^80, unknown field, bad JSON, a 2 MB body, missing key), or a
request it abandons after 0.3 s; a 429 makes that client wait ``Retry-After``, as a real client
would. It records every status code and latency, and samples the
server's resident memory (its process tree: the API process and vLLM's engine core) every
5 s. The point is what must *not* happen: any 5xx, or memory that keeps growing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

API_KEY = "soak-key"
PROMPTS = ["Tell me about the sea.", "What is a good breakfast?", "Describe a city at night.", "Give me a tip."]


def valid_align(rng: random.Random) -> dict:
    return {
        "prompt": rng.choice(PROMPTS),
        "reward_weights": {"sentiment": rng.random() + 0.1, "conciseness": rng.random()},
        "budget": rng.choice([2, 4, 8]),
        "max_tokens": 32,
        "algorithm": rng.choice(["bon", "soft_bon"]),
        "seed": rng.randrange(2**31),
    }


INVALID = [
    {"prompt": "x", "reward_weights": {"nope": 1}},
    {"prompt": "x", "reward_weights": {"sentiment": 1}, "budget": 0},
    {"prompt": "x", "reward_weights": {"sentiment": 1}, "seed": 2**80},
    {"prompt": "x", "reward_weights": {"sentiment": 1}, "surprise": True},
    {"prompt": "x", "reward_weights": {"sentiment": 1}, "stop": ["a"] * 1000},
]


async def one(client, rng: random.Random, log: list[dict]) -> None:
    """One request of a randomly drawn kind; a 429 is answered like a real client would, by
    waiting ``Retry-After`` before the next request (so the offered load stays ~2× capacity)."""
    import httpx

    kinds = ["align", "chat", "invalid", "bad_json", "huge", "no_key", "cancel"]
    kind = rng.choices(kinds, [50, 15, 15, 5, 5, 5, 5])[0]
    t0 = time.perf_counter()
    status: int | str
    retry_after = 0.0
    try:
        if kind == "cancel":
            body = {**valid_align(rng), "budget": 8, "max_tokens": 256}
            try:
                r = await client.post("/v1/align", json=body, timeout=0.3)
                status, retry_after = r.status_code, float(r.headers.get("retry-after", 0))
            except httpx.TimeoutException:
                status = "abandoned"  # the client went away mid-request: the server must abort it
        else:
            if kind == "align":
                r = await client.post("/v1/align", json=valid_align(rng))
            elif kind == "chat":
                body = {
                    "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
                    "max_tokens": 32,
                    "best_of": 4,
                    "reward_weights": {"sentiment": 1},
                }
                r = await client.post("/v1/chat/completions", json=body)
            elif kind == "invalid":
                r = await client.post("/v1/align", json=rng.choice(INVALID))
            elif kind == "bad_json":
                r = await client.post("/v1/align", content=b"{nope", headers={"content-type": "application/json"})
            elif kind == "huge":
                r = await client.post("/v1/align", json={"prompt": "x" * 2_000_000})
            else:
                r = await client.post("/v1/align", json=valid_align(rng), headers={"Authorization": ""})
            status, retry_after = r.status_code, float(r.headers.get("retry-after", 0))
    except httpx.HTTPError as exc:
        status = f"transport:{type(exc).__name__}"
    log.append({"kind": kind, "status": status, "latency_s": time.perf_counter() - t0, "t": time.time()})
    if status == 429:
        await asyncio.sleep(retry_after)


def rss_of_tree(pid: int) -> int:
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def main() -> None:
    import httpx

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--running", type=int, default=2)
    ap.add_argument("--queued", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/soak/soak.json")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from servers import start_bench_server

    env = {
        "IAMA_API_KEYS": API_KEY,
        "IAMA_MAX_CONCURRENT_REQUESTS": str(args.running),
        "IAMA_MAX_QUEUED_REQUESTS": str(args.queued),
        "IAMA_REQUEST_TIMEOUT_S": "120",
    }
    srv = start_bench_server(args.model, "soak", env)
    clients = 2 * (args.running + args.queued)
    rng = random.Random(0)
    log: list[dict] = []
    rss: list[dict] = []
    started = time.time()
    stop_at = time.monotonic() + args.minutes * 60

    async def loop(i: int) -> None:
        local = random.Random(rng.random())
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=600) as client:
            while time.monotonic() < stop_at:
                await one(client, local, log)

    async def sample() -> None:
        while time.monotonic() < stop_at:
            rss.append({"t_s": time.time() - started, "rss_mb": rss_of_tree(srv.proc.pid) / 2**20})
            await asyncio.sleep(5)

    async def run() -> None:
        await asyncio.gather(sample(), *(loop(i) for i in range(clients)))

    try:
        asyncio.run(run())
        health = httpx.get(f"{srv.url}/health", timeout=60).json()
    finally:
        code = srv.stop(timeout=600)
    statuses = Counter(str(r["status"]) for r in log)
    ok = [r["latency_s"] for r in log if r["status"] == 200 and r["kind"] in ("align", "chat")]
    ok.sort()
    first, last = rss[: max(1, len(rss) // 10)], rss[-max(1, len(rss) // 10) :]
    result = {
        "minutes": args.minutes,
        "capacity": {"running": args.running, "queued": args.queued, "clients": clients},
        "requests": len(log),
        "by_kind": Counter(r["kind"] for r in log),
        "statuses": statuses,
        "served_200": statuses.get("200", 0),
        "rate_limited_429": statuses.get("429", 0),
        "server_errors_5xx": sum(v for k, v in statuses.items() if k.isdigit() and int(k) >= 500),
        "latency_200_s": {
            "p50": statistics.median(ok) if ok else None,
            "p99": ok[min(len(ok) - 1, int(0.99 * len(ok)))] if ok else None,
            "n": len(ok),
        },
        "rss_mb": {
            "first_10pct_mean": statistics.mean(r["rss_mb"] for r in first),
            "last_10pct_mean": statistics.mean(r["rss_mb"] for r in last),
            "max": max(r["rss_mb"] for r in rss),
            "samples": rss,
        },
        "health_after": health,
        "exit_code": code,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    summary = {k: v for k, v in result.items() if k != "rss_mb"}
    summary["rss_mb"] = {k: v for k, v in result["rss_mb"].items() if k != "samples"}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
