"""Early rejection and adaptive budgets vs plain best-of-N: reward of the chosen completion
against generated tokens and wall time, on the held-out prompts with the default model.

    python benchmarks/early_rejection.py --out benchmarks/results/early_rejection/early_rejection.json

One `iama serve` (default model, the dtype rule's choice), rewards `sentiment` + ½ `relevance`
(both can judge partial text). For every held-out prompt, with the same seed for every arm:

* plain BoN_N for N ∈ {4, 8, 16};
* early rejection at N with several (checkpoints, keep) settings: candidate i is the same
  seeded request as plain BoN's i-th, so an arm differs from plain BoN only in what it stops;
* an adaptive budget (`budget: "auto"`, up to 16) aiming at plain BoN_4's mean score.

Each request runs alone (latency, tokens, the chosen candidate's weighted score); then plain
BoN_16 and each early-rejection setting at N = 16 run again with 4 concurrent clients
(throughput). The question: does an arm reach plain BoN_16's mean score (within its 95 %
interval; also the paired difference on the same prompts and seeds) with at most half its
generated tokens, and serve more requests per second?
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

WEIGHTS = {"sentiment": 1.0, "relevance": 0.5}
SETTINGS = {  # name -> early_rejection
    "er_c8_k0.5": {"checkpoints": [8], "keep": 0.5},
    "er_c8-24_k0.5": {"checkpoints": [8, 24], "keep": 0.5},
    "er_c16_k0.25": {"checkpoints": [16], "keep": 0.25},
}


def prompts(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]


def body(prompt: str, seed: int, max_tokens: int, **extra) -> dict:
    return {"prompt": prompt, "reward_weights": WEIGHTS, "max_tokens": max_tokens, "seed": seed, **extra}


async def one(client, payload: dict) -> dict:
    t0 = time.perf_counter()
    r = await client.post("/v1/align", json=payload)
    r.raise_for_status()
    d = r.json()
    return {
        "weighted": d["weighted_score"],
        "tokens": d["usage"]["completion_tokens"],
        "wall_s": time.perf_counter() - t0,
        "budget_spent": d.get("budget_spent"),
        "plain_bound": (d.get("early_rejection") or {}).get("plain_bon_tokens_bound"),
    }


def ci95(values: list[float], draws: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    v = np.asarray(values)
    means = [v[rng.integers(0, v.size, v.size)].mean() for _ in range(draws)]
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def summarize(rows: list[dict]) -> dict:
    w = [r["weighted"] for r in rows]
    return {
        "mean_weighted": statistics.mean(w),
        "ci95": ci95(w),
        "mean_tokens": statistics.mean(r["tokens"] for r in rows),
        "mean_wall_s": statistics.mean(r["wall_s"] for r in rows),
        "n": len(rows),
    }


async def run(url: str, ps: list[str], max_tokens: int, clients: int, seeds: int) -> dict:
    import httpx

    arms: dict[str, dict] = {}
    ps = [p for p in ps for _ in range(seeds)]  # request i has seed i: each prompt `seeds` times
    async with httpx.AsyncClient(base_url=url, timeout=3600) as c:
        await one(c, body(ps[0], 0, max_tokens, budget=2))  # warm-up
        for n in (4, 8, 16):
            arms[f"plain_N{n}"] = {
                "N": n,
                "rows": [await one(c, body(p, i, max_tokens, budget=n)) for i, p in enumerate(ps)],
            }
            for name, er in SETTINGS.items():
                rows = [await one(c, body(p, i, max_tokens, budget=n, early_rejection=er)) for i, p in enumerate(ps)]
                arms[f"{name}_N{n}"] = {"N": n, "setting": er, "rows": rows}
        target = statistics.mean(r["weighted"] for r in arms["plain_N4"]["rows"])
        rows = [
            await one(c, body(p, i, max_tokens, budget="auto", target_score=target, max_budget=16))
            for i, p in enumerate(ps)
        ]
        arms["auto_max16"] = {"N": 16, "target_score": target, "rows": rows}

        throughput = {}
        for name, extra in [("plain_N16", {})] + [(f"{k}_N16", {"early_rejection": v}) for k, v in SETTINGS.items()]:
            queue = list(enumerate(ps))

            async def worker(queue: list[tuple[int, str]] = queue, extra: dict = extra) -> int:
                done = 0
                while queue:
                    i, p = queue.pop()
                    await one(c, body(p, i, max_tokens, budget=16, **extra))
                    done += 1
                return done

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            wall = time.perf_counter() - t0
            throughput[name] = {
                "requests": len(ps),
                "clients": clients,
                "wall_s": wall,
                "requests_per_s": len(ps) / wall,
            }
    base = arms["plain_N16"]["rows"]
    for arm in arms.values():
        arm["summary"] = summarize(arm["rows"])
        # Same prompts and seeds as plain BoN_16: the paired difference is the sharper test.
        diff = [r["weighted"] - b["weighted"] for r, b in zip(arm["rows"], base, strict=True)]
        arm["summary"]["vs_plain_N16"] = {
            "mean_diff": statistics.mean(diff),
            "ci95": ci95(diff),
            "token_ratio": arm["summary"]["mean_tokens"] / statistics.mean(b["tokens"] for b in base),
        }
    return {"arms": arms, "throughput": throughput}


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, arm in result["arms"].items():
        s = arm["summary"]
        kind = "plain" if name.startswith("plain") else "auto" if name.startswith("auto") else "early rejection"
        color = {"plain": "tab:blue", "early rejection": "tab:red", "auto": "tab:green"}[kind]
        err = [[s["mean_weighted"] - s["ci95"][0]], [s["ci95"][1] - s["mean_weighted"]]]
        for ax, x in zip(axes, (s["mean_tokens"], s["mean_wall_s"]), strict=True):
            ax.errorbar([x], [s["mean_weighted"]], yerr=err, fmt="o", color=color, capsize=3)
            ax.annotate(
                name.replace("_", " "), (x, s["mean_weighted"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
    axes[0].set_xlabel("generated tokens per request (all candidates)")
    axes[1].set_xlabel("latency per request, alone (s)")
    for ax in axes:
        ax.set_ylabel("weighted score of the chosen completion")
        ax.grid(alpha=0.3)
    axes[0].set_title("reward vs compute: blue plain BoN, red early rejection, green auto")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", default=str(Path(__file__).with_name("heldout_prompts.jsonl")))
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=2, help="requests per prompt, each with its own seed")
    ap.add_argument("--out", default="benchmarks/results/early_rejection/early_rejection.json")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from servers import start_bench_server

    env = {"IAMA_MAX_CONCURRENT_REQUESTS": str(args.clients), "IAMA_REQUEST_TIMEOUT_S": "3600"}
    srv = start_bench_server(args.model, "bench-er", env)
    try:
        result = asyncio.run(run(srv.url, prompts(Path(args.prompts)), args.max_tokens, args.clients, args.seeds))
    finally:
        srv.stop()
    result["config"] = {
        "weights": WEIGHTS,
        "settings": SETTINGS,
        "max_tokens": args.max_tokens,
        "model": args.model,
        "seeds_per_prompt": args.seeds,
        "command": " ".join(sys.argv),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot(result, out.with_suffix(".png"))
    base = result["arms"]["plain_N16"]["summary"]
    print(f"plain BoN_16: {base['mean_weighted']:.3f} {base['ci95']} with {base['mean_tokens']:.0f} tokens")
    for name, arm in result["arms"].items():
        s = arm["summary"]
        d = s["vs_plain_N16"]
        print(
            f"{name:>18}: score {s['mean_weighted']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] "
            f"minus BoN_16 {d['mean_diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] "
            f"tokens {s['mean_tokens']:.0f} ({d['token_ratio']:.0%} of BoN_16) latency {s['mean_wall_s']:.2f} s"
        )
    print(json.dumps(result["throughput"], indent=2))


if __name__ == "__main__":
    main()
