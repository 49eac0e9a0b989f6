"""Early rejection at natural length, under load: plain best-of-N vs early rejection (the
server's default checkpoints, with and without over-sampling) vs ``budget: "auto"``.

    python benchmarks/natural_length.py --out benchmarks/results/natural_length/natural_length.json

One ``iama serve`` (default model), rewards ``sentiment`` + ``relevance`` (a MiniLM
sentence-embedding model), ``max_tokens`` 256 on ``natural_prompts.jsonl`` (short questions
whose answers end by themselves: the fraction at the cap is reported). For N ∈ {8, 16, 32}
every arm serves every prompt ``--seeds`` times from 4 concurrent clients; request k of a prompt
uses seed k (hashed by the server, so seeds share no candidate), the same in every arm, so arms
are paired. Reported per arm: the chosen completion's weighted score (95 % bootstrap interval
clustered by prompt), its paired difference to plain BoN_N and to plain BoN_16, generated
tokens, latency and requests/s under that load.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from iama.bootstrap import clustered_mean_ci

WEIGHTS = {"sentiment": 1.0, "relevance": 1.0}


def prompts(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]


def arms(n: int, target: float | None) -> dict[str, dict]:
    """Arm name -> the request fields that make it (on top of prompt, weights, seed)."""
    out: dict[str, dict] = {
        f"plain_N{n}": {"budget": n},
        f"er_N{n}": {"budget": n, "early_rejection": {}},
        f"er_over_N{n}": {"budget": n, "early_rejection": {"oversample": True}},
    }
    if n == 32:  # the replay's cheapest setting at plain BoN_16's reward (partial_ranking.py)
        out["er_replay_best_N32"] = {"budget": 32, "early_rejection": {"checkpoints": [0.0625, 0.25], "keep": 0.125}}
    if target is not None:
        out[f"auto_N{n}"] = {"budget": "auto", "max_budget": n, "target_score": target}
    return out


async def one(client, payload: dict) -> dict:
    t0 = time.perf_counter()
    r = await client.post("/v1/align", json=payload)
    r.raise_for_status()
    d = r.json()
    cands = d["candidates"]
    return {
        "weighted": d["weighted_score"],
        "tokens": d["usage"]["completion_tokens"],
        "wall_s": time.perf_counter() - t0,
        "started": len(cands),
        "at_cap": sum(c["finish_reason"] == "length" for c in cands),
        "finished": sum(c["finish_reason"] in ("stop", "length") for c in cands),
        "chosen_tokens": cands[d["chosen_index"]]["completion_tokens"],
        "chosen_at_cap": cands[d["chosen_index"]]["finish_reason"] == "length",
    }


async def serve_arm(client, jobs: list[tuple[int, int, str]], extra: dict, max_tokens: int, clients: int) -> dict:
    """Every (prompt index, seed, prompt) once, from ``clients`` concurrent workers."""
    queue = list(reversed(jobs))
    rows: dict[tuple[int, int], dict] = {}

    async def worker() -> None:
        while queue:
            i, seed, p = queue.pop()
            body = {"prompt": p, "reward_weights": WEIGHTS, "max_tokens": max_tokens, "seed": seed, **extra}
            rows[i, seed] = {"prompt": i, "seed": seed, **await one(client, body)}

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    ordered = [rows[i, s] for i, s, _ in jobs]
    return {"request": extra, "rows": ordered, "wall_s": wall, "requests_per_s": len(jobs) / wall}


def summarize(result: dict) -> None:
    arms_ = result["arms"]
    ref16 = arms_.get("plain_N16")
    for arm in arms_.values():
        rows = arm["rows"]
        g = np.array([r["prompt"] for r in rows])
        w = np.array([r["weighted"] for r in rows])
        t = np.array([r["tokens"] for r in rows], dtype=float)
        s = {
            "mean_weighted": float(w.mean()),
            "ci95": clustered_mean_ci(w, g),
            "mean_tokens": float(t.mean()),
            "mean_wall_s": statistics.mean(r["wall_s"] for r in rows),
            "requests_per_s": arm["requests_per_s"],
            "mean_started": statistics.mean(r["started"] for r in rows),
            "fraction_at_cap": sum(r["at_cap"] for r in rows) / max(1, sum(r["finished"] for r in rows)),
            "chosen_at_cap": statistics.mean(r["chosen_at_cap"] for r in rows),
            "n": len(rows),
        }
        for ref_name in {f"plain_N{arm['N']}", "plain_N16"}:
            ref = arms_.get(ref_name) if ref_name != "plain_N16" else ref16
            if ref is None:
                continue
            rw = np.array([r["weighted"] for r in ref["rows"]])
            rt = np.array([r["tokens"] for r in ref["rows"]], dtype=float)
            d = w - rw
            s[f"vs_{ref_name}"] = {
                "mean_diff": float(d.mean()),
                "ci95": clustered_mean_ci(d, g),
                "relative": float(d.mean() / abs(rw.mean())),
                "token_ratio": float(t.sum() / rt.sum()),
                # Wall time compares only between arms timed in the same run (same machine, same load).
                "throughput_ratio": arm["requests_per_s"] / ref["requests_per_s"]
                if arm.get("timed_in", "first") == ref.get("timed_in", "first")
                else None,
            }
        arm["summary"] = s


async def run(url: str, ps: list[str], max_tokens: int, clients: int, seeds: int, budgets: list[int]) -> dict:
    import httpx

    jobs = [(i, s, p) for s in range(seeds) for i, p in enumerate(ps)]
    result: dict = {"arms": {}}
    async with httpx.AsyncClient(base_url=url, timeout=3600) as c:
        warm = {"prompt": ps[0], "reward_weights": WEIGHTS, "max_tokens": 8, "budget": 2, "seed": 99}
        await one(c, {**warm, "return_candidates": True})
        for n in budgets:
            plain_name = f"plain_N{n}"
            for name, extra in arms(n, None).items():
                extra = {**extra, "return_candidates": True}
                t0 = time.perf_counter()
                result["arms"][name] = {"N": n, **await serve_arm(c, jobs, extra, max_tokens, clients)}
                print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            target = statistics.mean(r["weighted"] for r in result["arms"][plain_name]["rows"])
            name, extra = next(iter({k: v for k, v in arms(n, target).items() if k.startswith("auto")}.items()))
            extra = {**extra, "return_candidates": True}
            result["arms"][name] = {
                "N": n,
                "target_score": target,
                **await serve_arm(c, jobs, extra, max_tokens, clients),
            }
            print(f"{name} done", file=sys.stderr, flush=True)
    summarize(result)
    return result


async def rerun(
    url: str, ps: list[str], max_tokens: int, clients: int, previous: dict, names: list[str], label: str
) -> dict:
    """Serve some arms of a finished run again (same requests) and put them in its place: for
    arms whose timing was disturbed (another heavy job on the machine while they ran). Scores
    and tokens repeat exactly (seeded); wall times do not carry across machines, so each arm
    records ``timed_in`` and requests/s ratios are only taken within one label."""
    import httpx

    seeds = previous["config"]["seeds_per_prompt"]
    jobs = [(i, s, p) for s in range(seeds) for i, p in enumerate(ps)]
    async with httpx.AsyncClient(base_url=url, timeout=3600) as c:
        warm = {"prompt": ps[0], "reward_weights": WEIGHTS, "max_tokens": 8, "budget": 2, "seed": 99}
        await one(c, {**warm, "return_candidates": True})
        for name in names:
            old = previous["arms"][name]
            extra = {**arms(old["N"], old.get("target_score"))[name], "return_candidates": True}
            timed = {"timed_in": label, "timed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            earlier = [
                *old.get("earlier_timings", []),
                {k: old.get(k, "first") for k in ("timed_in", "wall_s", "requests_per_s")},
            ]
            served = await serve_arm(c, jobs, extra, max_tokens, clients)
            previous["arms"][name] = {**old, **served, **timed, "earlier_timings": earlier}
            print(f"{name} again", file=sys.stderr, flush=True)
    summarize(previous)
    return previous


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = {"plain": "tab:blue", "er": "tab:red", "er_over": "tab:purple", "auto": "tab:green"}
    for name, arm in result["arms"].items():
        s = arm["summary"]
        kind = name.rsplit("_N", 1)[0].replace("_replay_best", "")
        err = [[s["mean_weighted"] - s["ci95"][0]], [s["ci95"][1] - s["mean_weighted"]]]
        xs = (s["mean_tokens"], s["mean_wall_s"], s["requests_per_s"])
        # Squares: wall time measured in a later run on another machine (compare squares with squares).
        timed_later = arm.get("timed_in", "first") != "first"
        for i, (ax, x) in enumerate(zip(axes, xs, strict=True)):
            fmt = "s" if timed_later and i > 0 else "o"
            ax.errorbar([x], [s["mean_weighted"]], yerr=err, fmt=fmt, color=colors[kind], capsize=3)
            ax.annotate(
                f"{kind} N={arm['N']}", (x, s["mean_weighted"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
    axes[0].set_xlabel("generated tokens per request (all candidates)")
    axes[1].set_xlabel("latency per request under 4 concurrent clients (s)")
    axes[2].set_xlabel("requests/s under 4 concurrent clients")
    for ax in axes:
        ax.set_ylabel("weighted score of the chosen completion")
        ax.grid(alpha=0.3)
    axes[0].set_title("blue plain BoN, red early rejection, purple over-sampled, green auto", fontsize=9)
    axes[1].set_title("squares: timed in a second run, on a slower machine", fontsize=9)
    axes[2].set_title("compare squares with squares, circles with circles", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", default=str(Path(__file__).with_name("natural_prompts.jsonl")))
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=1, help="requests per prompt, each with its own seed")
    ap.add_argument("--budgets", default="8,16,32")
    ap.add_argument("--checkpoints", help="the server's default checkpoints (JSON list); default: the setting's")
    ap.add_argument("--keep", type=float, help="the server's default keep; default: the setting's")
    ap.add_argument("--out", default="benchmarks/results/natural_length/natural_length.json")
    ap.add_argument("--rerun", help="comma-separated arms of the run in --out to serve again and replace")
    ap.add_argument("--label", default="rerun", help="--rerun: the timing group its arms join (ratios stay within one)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from servers import start_bench_server

    from iama_server.settings import ServerSettings

    defaults = ServerSettings()
    checkpoints = json.loads(args.checkpoints) if args.checkpoints else defaults.early_rejection_checkpoints
    keep = args.keep if args.keep is not None else defaults.early_rejection_keep

    budgets = [int(b) for b in args.budgets.split(",")]
    env = {
        "IAMA_MAX_CONCURRENT_REQUESTS": str(args.clients),
        "IAMA_REQUEST_TIMEOUT_S": "3600",
        "IAMA_MAX_BUDGET": str(max(budgets)),
        "IAMA_MAX_TOKENS": str(args.max_tokens),
        "IAMA_DEFAULT_MAX_TOKENS": str(min(128, args.max_tokens)),
        "IAMA_EARLY_REJECTION_CHECKPOINTS": json.dumps(checkpoints),
        "IAMA_EARLY_REJECTION_KEEP": str(keep),
    }
    srv = start_bench_server(args.model, "bench-natural", env)
    try:
        ps = prompts(Path(args.prompts))
        if args.rerun:
            previous = json.loads(Path(args.out).read_text())
            names = args.rerun.split(",")
            result = asyncio.run(rerun(srv.url, ps, args.max_tokens, args.clients, previous, names, args.label))
        else:
            result = asyncio.run(run(srv.url, ps, args.max_tokens, args.clients, args.seeds, budgets))
    finally:
        srv.stop()
    if args.rerun:
        result["config"].setdefault("reruns", []).append(
            {"arms": args.rerun.split(","), "label": args.label, "command": " ".join(sys.argv)}
        )
    else:
        result["config"] = {
            "weights": WEIGHTS,
            "max_tokens": args.max_tokens,
            "clients": args.clients,
            "seeds_per_prompt": args.seeds,
            "model": args.model,
            "server_env": env,
            "command": " ".join(sys.argv),
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    for name, arm in result["arms"].items():
        s = arm["summary"]
        ref = s.get("vs_plain_N16", {})
        print(
            f"{name:>14}: score {s['mean_weighted']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] "
            f"tokens {s['mean_tokens']:.0f} started {s['mean_started']:.1f} req/s {s['requests_per_s']:.3f} "
            f"at cap {s['fraction_at_cap']:.1%} | vs BoN_16 {ref.get('mean_diff', 0):+.3f} "
            f"{ref.get('ci95')} tokens {ref.get('token_ratio', 0):.0%} "
            f"req/s ×{ref.get('throughput_ratio') or float('nan'):.2f}"
        )


if __name__ == "__main__":
    main()
