"""Many tenants on one server: what priorities buy under overload, and what keys cost.

    python benchmarks/tenants.py overhead   --out benchmarks/results/tenants/overhead.json
    python benchmarks/tenants.py priorities --out benchmarks/results/tenants/priorities.json

``overhead``: the request path in-process (the real app, a fake engine that answers at once),
with and without tenancy: a keys file (lookup by SHA-256), the key's limiter lease (tokens per
minute and concurrency, in-process) and a usage row committed to SQLite (WAL, synchronous=FULL)
before the answer, against no keys and no usage store. The two configurations alternate request
by request; the difference of the medians is the policy's and the usage log's cost per request.
Each component is also timed alone.

``priorities``: the default model behind ``iama serve`` with two keys, ``gold`` (high) and
``free`` (low), and ``max_concurrent_requests`` C; 2C clients (C of each key) send best-of-N
requests back to back: twice the capacity, so a queue forms. Per key, latency p50/p95, once
with the classes (``scheduling_policy: priority``, admission by class) and once without (both
keys ``normal``): the high class's p95 against the low class's and against no priorities.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
GOLD, FREE = "gold-secret-key", "free-secret-key"


def keys_file(path: Path, gold: str, free: str) -> Path:
    keys = [
        {"name": "gold", "sha256": hashlib.sha256(GOLD.encode()).hexdigest(), "priority": gold,
         "limits": {"tokens_per_minute": 10**9, "max_concurrent_requests": 64}},
        {"name": "free", "sha256": hashlib.sha256(FREE.encode()).hexdigest(), "priority": free,
         "limits": {"tokens_per_minute": 10**9, "max_concurrent_requests": 64}},
    ]  # fmt: skip
    path.write_text(yaml.safe_dump({"keys": keys}))
    return path


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


# ---------------------------------------------------------------------------------- overhead
async def overhead(requests: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_engine import FakeEngine

    from iama_server.app import create_app
    from iama_server.keys import KeyRing
    from iama_server.limits import LocalLimiter
    from iama_server.settings import ServerSettings
    from iama_server.usage import UsageRow, UsageStore

    tmp = Path(tempfile.mkdtemp(prefix="iama-tenants-"))
    common = {
        "model": "fake", "default_rewards": False, "rewards": {"short": {"type": "length", "target": 3}},
        "max_budget": 4, "max_tokens": 16, "default_max_tokens": 16, "max_concurrent_requests": 4,
        "max_queued_requests": 8,
    }  # fmt: skip
    keys = str(keys_file(tmp / "keys.yaml", "high", "low"))
    configs = {
        "none": {**common, "api_keys": [GOLD], "usage_db": None},
        "keys": {**common, "keys_file": keys, "usage_db": None},
        "tenancy": {**common, "keys_file": keys, "usage_db": f"sqlite:///{tmp}/usage.sqlite3"},
    }
    body = {"prompt": "Hi", "reward_weights": {"short": 1}, "budget": 2, "max_tokens": 8}
    apps = {k: create_app(ServerSettings.model_validate(v), engine=FakeEngine()) for k, v in configs.items()}
    times: dict[str, list[float]] = {k: [] for k in apps}
    async with contextlib_stack(apps) as clients:
        for c in clients.values():  # warm: first requests build caches
            for _ in range(20):
                (await c.post("/v1/align", json=body)).raise_for_status()
        for i in range(requests):
            for k in list(clients) if i % 2 == 0 else list(reversed(clients)):
                t0 = time.perf_counter()
                r = await clients[k].post("/v1/align", json=body)
                times[k].append(time.perf_counter() - t0)
                r.raise_for_status()
    # the components alone
    ring = KeyRing(tmp / "keys.yaml")
    policy = ring.lookup(GOLD)
    assert policy is not None
    t0 = time.perf_counter()
    for _ in range(requests):
        ring.lookup(GOLD)
    lookup_s = (time.perf_counter() - t0) / requests
    limiter = LocalLimiter()
    t0 = time.perf_counter()
    for _ in range(requests):
        lease = await limiter.acquire("gold", policy.limits, 100)
        await limiter.release(lease, 50)
    lease_s = (time.perf_counter() - t0) / requests
    store = UsageStore(f"sqlite:///{tmp}/alone.sqlite3")
    store.create()
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    row = UsageRow("gold", "fake", "/v1/align", "r", 200, "ok", now, now, "bon", 2, 2, 3, 10)
    record_times = []
    for _ in range(min(requests, 500)):
        t0 = time.perf_counter()
        store.record(row)
        record_times.append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "requests_each": requests,
        "median_s": med,
        "p95_s": {k: quantile(v, 0.95) for k, v in times.items()},
        "overhead_p50_ms": 1000 * (med["tenancy"] - med["none"]),
        "keys_and_limits_p50_ms": 1000 * (med["keys"] - med["none"]),
        "usage_log_p50_ms": 1000 * (med["tenancy"] - med["keys"]),
        "components_ms": {
            "key_lookup": 1000 * lookup_s,
            "limiter_acquire_and_release": 1000 * lease_s,
            "usage_record_p50": 1000 * statistics.median(record_times),
            "usage_record_p95": 1000 * quantile(record_times, 0.95),
        },
    }


class contextlib_stack:
    """The apps' lifespans entered together, a client for each."""

    def __init__(self, apps: dict[str, Any]) -> None:
        self.apps = apps
        self.stack: Any = None

    async def __aenter__(self) -> dict[str, httpx.AsyncClient]:
        import contextlib

        self.stack = contextlib.AsyncExitStack()
        clients = {}
        for k, app in self.apps.items():
            await self.stack.enter_async_context(app.router.lifespan_context(app))
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://iama",
                headers={"Authorization": f"Bearer {GOLD}"},
            )  # fmt: skip
            clients[k] = await self.stack.enter_async_context(client)
            for _ in range(3000):
                if (await clients[k].get("/health")).status_code == 200:
                    break
                await asyncio.sleep(0.01)
        return clients

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.aclose()


# ---------------------------------------------------------------------------------- priorities
async def load(url: str, per_key: int, seconds: float, body: dict[str, Any]) -> dict[str, list[float]]:
    """``per_key`` clients of each key, back to back for ``seconds``; latencies per key. Each
    client walks the natural prompts from its own place: answers of different lengths keep the
    requests from finishing in lockstep (then every freed slot would find exactly one waiter per
    slot, and no order would matter)."""
    lines = (ROOT / "benchmarks" / "natural_prompts.jsonl").read_text().splitlines()
    prompts = [json.loads(x)["prompt"] for x in lines if x.strip()]
    out: dict[str, list[float]] = {"gold": [], "free": []}
    deadline = time.perf_counter() + seconds

    async def client(name: str, key: str, i: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=600, headers={"Authorization": f"Bearer {key}"}) as c:
            k = 0
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                prompt = prompts[(7 * i + k + (0 if name == "gold" else 3)) % len(prompts)]
                r = await c.post("/v1/align", json={**body, "prompt": prompt, "seed": 10_000 * i + k})
                r.raise_for_status()
                out[name].append(time.perf_counter() - t0)
                k += 1

    await asyncio.gather(*(client(n, key, i) for i in range(per_key) for n, key in (("gold", GOLD), ("free", FREE))))
    return out


def priorities(capacity: int, seconds: float, budget: int, max_tokens: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    from servers import start_bench_server

    tmp = Path(tempfile.mkdtemp(prefix="iama-tenants-"))
    body = {"reward_weights": {"sentiment": 1.0}, "budget": budget, "max_tokens": max_tokens, "temperature": 1.0}
    runs = {}
    for label, gold, free in (("priorities", "high", "low"), ("no_priorities", "normal", "normal")):
        env = {
            "IAMA_KEYS_FILE": str(keys_file(tmp / f"{label}.yaml", gold, free)),
            "IAMA_MAX_CONCURRENT_REQUESTS": str(capacity),
            "IAMA_MAX_QUEUED_REQUESTS": str(8 * capacity),
            "IAMA_USAGE_DB": f"sqlite:///{tmp}/{label}.sqlite3",
        }
        srv = start_bench_server("default", f"tenants-{label}", env)
        try:
            asyncio.run(load(srv.url, capacity, 10, body))  # warm-up, not counted
            lat = asyncio.run(load(srv.url, capacity, seconds, body))
        finally:
            srv.stop()
        runs[label] = {
            k: {"requests": len(v), "p50_s": statistics.median(v), "p95_s": quantile(v, 0.95)} for k, v in lat.items()
        } | {"latencies_s": lat}
    return {"capacity": capacity, "clients_per_key": capacity, "seconds": seconds, "body": body, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["overhead", "priorities"])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--capacity", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.what == "overhead":
        result = asyncio.run(overhead(args.requests))
    else:
        result = priorities(args.capacity, args.seconds, args.budget, args.max_tokens)
    result = {"command": "python benchmarks/tenants.py " + " ".join(sys.argv[1:]), **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if "runs" in result:
        print(json.dumps({k: {n: s for n, s in v.items() if n != "latencies_s"} for k, v in result["runs"].items()}))


if __name__ == "__main__":
    main()
