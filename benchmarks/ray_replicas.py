"""Throughput of one ``iama serve`` against Ray Serve with 1 and 2 replicas, on this machine.

    python benchmarks/ray_replicas.py --out benchmarks/results/ray_replicas/ray_replicas.json

Each setup serves the same closed-loop load: ``c`` clients for c ∈ {1, 2, 4, 8}, each sending
``/v1/align`` requests (budget 4, ``max_tokens`` 64, the natural-length prompts, seeds spaced
by the server's hash) back to back. Per setup and load: requests/s, p50 and p99 latency. The
ratios compare requests/s at the same p99 (linear interpolation of each setup's req/s-vs-p99
curve at the p99s the plain server reached). Ray's replicas share this machine's cores, so
two replicas here measure Ray's overhead and the router, not GPU scaling (see the README).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LOADS = (1, 2, 4, 8)
BODY = {"reward_weights": {"sentiment": 1.0}, "budget": 4, "max_tokens": 64}


def prompts() -> list[str]:
    path = ROOT / "benchmarks" / "natural_prompts.jsonl"
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]


async def sweep(url: str, per_client: int) -> list[dict]:
    import httpx

    ps = prompts()
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        await c.post("/v1/align", json={**BODY, "prompt": ps[0], "seed": 10**6})  # warm-up
        for load in LOADS:
            lat: list[float] = []

            async def client(k: int, load: int = load, lat: list[float] = lat) -> None:
                for j in range(per_client):
                    i = k * per_client + j
                    t0 = time.perf_counter()
                    r = await c.post("/v1/align", json={**BODY, "prompt": ps[i % len(ps)], "seed": i})
                    r.raise_for_status()
                    lat.append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            await asyncio.gather(*(client(k) for k in range(load)))
            wall = time.perf_counter() - t0
            row = {
                "clients": load,
                "requests": len(lat),
                "wall_s": wall,
                "requests_per_s": len(lat) / wall,
                "p50_s": float(np.percentile(lat, 50)),
                "p99_s": float(np.percentile(lat, 99)),
            }
            print(json.dumps(row), file=sys.stderr, flush=True)
            out.append(row)
    return out


def run_setup(name: str, args: list[str], per_client: int, log_dir: Path) -> dict:
    """Start one setup with the tests' launcher (waits for ``/health``, fails with the log's
    tail if the server exits), load it, then stop the whole process group and Ray with it."""
    from servers import IAMA, free_port, spawn_until_healthy

    env = {**os.environ, "IAMA_MAX_CONCURRENT_REQUESTS": "8", "VLLM_CPU_KVCACHE_SPACE": "2"}
    port = free_port()
    cmd = [IAMA, "serve", "--port", str(port), *args]
    t0 = time.perf_counter()
    srv = spawn_until_healthy(cmd, port, log_dir / f"{name}.log", env, 1800)
    started = time.perf_counter() - t0
    try:
        rows = asyncio.run(sweep(srv.url, per_client))
    finally:
        # SIGINT to the group: Ray's driver and its replicas (their own processes) all get it.
        os.killpg(srv.proc.pid, signal.SIGINT)
        try:
            srv.proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(srv.proc.pid, signal.SIGKILL)
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True)
    return {"command": cmd, "start_s": started, "loads": rows}


def throughput_at(rows: list[dict], p99: float) -> float | None:
    """req/s at a given p99, interpolated along the setup's load curve; None outside the p99s
    it reached (no extrapolation: a setup whose lightest load is already slower has no
    throughput at that p99)."""
    pts = sorted((r["p99_s"], r["requests_per_s"]) for r in rows)
    xs, ys = [p for p, _ in pts], [t for _, t in pts]
    if not xs[0] <= p99 <= xs[-1]:
        return None
    return float(np.interp(p99, xs, ys))


def ratios(result: dict) -> None:
    """Against one ``iama serve``: requests/s at the same load, and at the same p99 (None where
    the setup never ran at that p99)."""
    base = result["setups"]["iama_serve"]["loads"]
    same_p99, same_load = {}, {}
    for name, s in result["setups"].items():
        same_p99[name], same_load[name] = [], []
        for b, r in zip(base, s["loads"], strict=True):
            t = throughput_at(s["loads"], b["p99_s"])
            same_p99[name].append(
                {"clients": b["clients"], "p99_s": b["p99_s"], "ratio": None if t is None else t / b["requests_per_s"]}
            )
            same_load[name].append({"clients": b["clients"], "ratio": r["requests_per_s"] / b["requests_per_s"]})
    result["ratios_at_the_same_p99"], result["ratios_at_the_same_load"] = same_p99, same_load


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--per-client", type=int, default=6, help="requests each client sends per load level")
    ap.add_argument("--out", default="benchmarks/results/ray_replicas/ray_replicas.json")
    ap.add_argument("--ratios-only", action="store_true", help="recompute the ratios of an existing --out")
    args = ap.parse_args()
    if args.ratios_only:
        out = Path(args.out)
        result = json.loads(out.read_text())
        ratios(result)
        out.write_text(json.dumps(result, indent=1))
        return
    sys.path.insert(0, str(ROOT / "tests"))
    log_dir = ROOT / "runs" / "bench-ray"
    log_dir.mkdir(parents=True, exist_ok=True)
    setups = {
        "iama_serve": [],
        "ray_1_replica": ["--ray", "--replicas", "1"],
        "ray_2_replicas": ["--ray", "--replicas", "2"],
    }
    result: dict = {"setups": {}}
    for name, args_ in setups.items():
        result["setups"][name] = run_setup(name, args_, args.per_client, log_dir)
    ratios(result)
    result["config"] = {"body": BODY, "loads": LOADS, "per_client": args.per_client, "command": " ".join(sys.argv)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    for name, rows in result["ratios_at_the_same_p99"].items():
        print(name, [(r["clients"], r["ratio"] and round(r["ratio"], 2)) for r in rows])


if __name__ == "__main__":
    main()
