"""How well does a partial completion's score rank the final scores? Measured per checkpoint,
to choose early rejection's defaults; and every early-rejection setting replayed offline on the
same candidates.

    python benchmarks/partial_ranking.py --out benchmarks/results/partial_ranking/partial_ranking.json

For each prompt of ``natural_prompts.jsonl`` (short questions whose answers end by themselves)
the default model samples ``--candidates`` completions at ``--max-tokens`` with the server's
seeding (one vLLM request with ``n``, seeded by the prompt's hashed seed, so prompts share no
candidate). Every completion is scored by the reward mix (``sentiment`` + ``relevance``, the
latter a MiniLM sentence-embedding model) in full and at each checkpoint's prefix (the first k
generated tokens, decoded: what the server scores at checkpoint k).

Reported, with prompt-clustered bootstrap intervals (the prompt is the cluster: its candidates
share it):

* the fraction of completions at the cap, and the length quantiles;
* per checkpoint, the Spearman correlation between partial and final weighted scores across a
  prompt's candidates, and how often the final best candidate is among the top ``keep``;
* plain BoN_N and every early-rejection setting (checkpoints × keep × over-sampling) replayed
  with the server's rule (:func:`iama.algorithms.early_rejection_keep`): the chosen
  candidate's final score and the tokens generated. The replay is what the server does on the
  same candidates up to tokens a running candidate generates while the slowest reaches the
  checkpoint (the server's benchmark, ``natural_length.py``, measures those).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iama.algorithms import early_rejection_keep, oversampled_budget
from iama.bootstrap import clustered_mean_ci

WEIGHTS = {"sentiment": 1.0, "relevance": 1.0}
FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)
KEEPS = (0.5, 0.25, 0.125)


def prompts(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]


def sample(model: str, ps: list[str], n: int, max_tokens: int) -> list[dict]:
    """Every prompt's ``n`` candidates: generated token ids, whether each ended by itself."""
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from iama.models import resolve_model
    from iama.seeds import candidate_base_seed
    from iama.vllm_settings import vllm_engine_kwargs

    path = resolve_model(model)
    tok = AutoTokenizer.from_pretrained(path)
    llm = LLM(model=path, seed=0, **vllm_engine_kwargs(2, "auto"))
    ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True) for p in ps]
    ids = [list(x["input_ids"]) if hasattr(x, "keys") else list(x) for x in ids]
    params = [
        SamplingParams(n=n, temperature=1.0, max_tokens=max_tokens, seed=candidate_base_seed(i)) for i in range(len(ps))
    ]
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": x} for x in ids], params)
    seconds = time.perf_counter() - t0
    rows = []
    for p, x, out in zip(ps, ids, outs, strict=True):
        cands = sorted(out.outputs, key=lambda o: o.index)
        rows.append(
            {
                "prompt": p,
                "prompt_tokens": len(x),
                "candidates": [
                    {"token_ids": list(c.token_ids), "finish_reason": c.finish_reason, "text": c.text} for c in cands
                ],
            }
        )
    print(f"sampled {len(ps)} × {n} in {seconds:.0f} s", file=sys.stderr)
    return rows, tok


def score(rows: list[dict], tok, checkpoints: list[int]) -> None:
    """Final and per-checkpoint partial scores, per reward and weighted, in place."""
    from iama.rewards import RewardSet

    rs = RewardSet({k: {"type": k} for k in WEIGHTS})
    rs.warm_up()
    for row in rows:
        texts = [c["text"] for c in row["candidates"]]
        prefixes = {
            cp: [tok.decode(c["token_ids"][:cp], skip_special_tokens=True) for c in row["candidates"]]
            for cp in checkpoints
        }
        everything = texts + [t for cp in checkpoints for t in prefixes[cp]]
        raw = rs.score([row["prompt"]] * len(everything), everything)
        weighted = rs.combine(raw, WEIGHTS)
        n = len(texts)
        for j, c in enumerate(row["candidates"]):
            c["tokens"] = len(c.pop("token_ids"))
            c["final"] = float(weighted[j])
            c["final_by_reward"] = {k: float(v[j]) for k, v in raw.items()}
            c["partial"] = {str(cp): float(weighted[n * (1 + i) + j]) for i, cp in enumerate(checkpoints)}


def replay(cands: list[dict], n0: int, checkpoints: list[int], keep: float) -> tuple[float, int]:
    """The server's early rejection on the first ``n0`` candidates: (chosen final, tokens)."""
    pool = cands[:n0]
    rejected: dict[int, int] = {}
    for cp in checkpoints:
        running = [j for j, c in enumerate(pool) if c["tokens"] > cp and j not in rejected]
        if len(running) <= 1:
            break
        kept = set(early_rejection_keep([pool[j]["partial"][str(cp)] for j in running], [True] * len(running), keep))
        for i, j in enumerate(running):
            if i not in kept:
                rejected[j] = cp
    tokens = sum(rejected.get(j, c["tokens"]) for j, c in enumerate(pool))
    best = max(c["final"] for j, c in enumerate(pool) if j not in rejected)
    return best, tokens


def analyse(rows: list[dict], max_tokens: int, checkpoints: list[int], budgets: list[int]) -> dict:
    from scipy.stats import spearmanr

    lengths = np.array([c["tokens"] for r in rows for c in r["candidates"]])
    capped = np.array([c["finish_reason"] == "length" for r in rows for c in r["candidates"]])
    out: dict = {
        "completions": int(lengths.size),
        "fraction_at_cap": float(capped.mean()),
        "length_quantiles": {str(q): float(np.quantile(lengths, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
        "mean_tokens": float(lengths.mean()),
    }
    ranking = {}
    for cp in checkpoints:
        rho, top = [], {str(k): [] for k in KEEPS}
        for r in rows:
            final = np.array([c["final"] for c in r["candidates"]])
            part = np.array([c["partial"][str(cp)] for c in r["candidates"]])
            rho.append(spearmanr(part, final).statistic if np.ptp(part) > 0 and np.ptp(final) > 0 else np.nan)
            best = int(np.argmax(final))
            for k in KEEPS:
                kept = early_rejection_keep(part, [True] * len(part), k)
                top[str(k)].append(float(best in kept))
        rho_a = np.array(rho, dtype=float)
        rho_a = rho_a[np.isfinite(rho_a)]
        ranking[str(cp)] = {
            "fraction": cp / max_tokens,
            "spearman_mean": float(rho_a.mean()),
            "spearman_ci95": clustered_mean_ci(rho_a),
            "best_survives": {
                k: {"mean": float(np.mean(v)), "ci95": clustered_mean_ci(np.array(v))} for k, v in top.items()
            },
            "running_fraction": float((lengths > cp).mean()),
        }
    out["ranking"] = ranking

    settings = [[cp] for cp in checkpoints] + [list(p) for p in itertools.combinations(checkpoints, 2)]
    arms: dict[str, dict] = {}
    n_all = len(rows[0]["candidates"])
    for n in budgets:
        plain = np.array([replay(r["candidates"], n, [], 1.0) for r in rows])
        arms[f"plain_N{n}"] = {"N": n, "n0": n, "score": plain[:, 0].tolist(), "tokens": plain[:, 1].tolist()}
        for cps, keep, over in itertools.product(settings, KEEPS, (False, True)):
            n0 = oversampled_budget(n, cps, keep, max_tokens, n_all) if over else n
            if over and n0 <= n:
                continue
            if over and oversampled_budget(n, cps, keep, max_tokens, 10**6) > n_all:
                continue  # would need more candidates than were sampled
            res = np.array([replay(r["candidates"], n0, cps, keep) for r in rows])
            name = f"er_N{n}_c{'-'.join(map(str, cps))}_k{keep}" + (f"_over{n0}" if over else "")
            arms[name] = {
                "N": n,
                "n0": n0,
                "checkpoints": cps,
                "keep": keep,
                "score": res[:, 0].tolist(),
                "tokens": res[:, 1].tolist(),
            }
    ref16 = arms.get("plain_N16")
    for arm in arms.values():
        base = arms[f"plain_N{arm['N']}"]
        s, t = np.array(arm["score"]), np.array(arm["tokens"])
        bs, bt = np.array(base["score"]), np.array(base["tokens"])
        arm["summary"] = {
            "mean_score": float(s.mean()),
            "ci95": clustered_mean_ci(s),
            "mean_tokens": float(t.mean()),
            "token_ratio_vs_plain": float(t.sum() / bt.sum()),
            "diff_vs_plain": float((s - bs).mean()),
            "diff_ci95": clustered_mean_ci(s - bs),
        }
        if ref16 is not None:  # the yardstick, whatever N the arm has: paired by prompt
            rs, rt = np.array(ref16["score"]), np.array(ref16["tokens"])
            arm["summary"]["vs_plain_N16"] = {
                "diff": float((s - rs).mean()),
                "relative": float((s - rs).mean() / abs(rs.mean())),
                "ci95": clustered_mean_ci(s - rs),
                "token_ratio": float(t.sum() / rt.sum()),
            }
    if ref16 is not None:
        # the cheapest arm at BoN_16's reward: within 1 % of it, or its paired interval covers 0
        ok = [
            (a["summary"]["vs_plain_N16"]["token_ratio"], name)
            for name, a in arms.items()
            if a["summary"]["vs_plain_N16"]["relative"] >= -0.01 or a["summary"]["vs_plain_N16"]["ci95"][1] >= 0
        ]
        out["cheapest_at_plain_N16"] = [{"arm": n, "token_ratio": r} for r, n in sorted(ok)[:10]]
    out["arms"] = arms
    return out


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rk = result["ranking"]
    cps = sorted(rk, key=int)
    x = [rk[c]["fraction"] for c in cps]
    m = [rk[c]["spearman_mean"] for c in cps]
    lo = [rk[c]["spearman_mean"] - rk[c]["spearman_ci95"][0] for c in cps]
    hi = [rk[c]["spearman_ci95"][1] - rk[c]["spearman_mean"] for c in cps]
    axes[0].errorbar(x, m, yerr=[lo, hi], fmt="o-", capsize=3, label="Spearman(partial, final)")
    for k in KEEPS:
        axes[0].plot(x, [rk[c]["best_survives"][str(k)]["mean"] for c in cps], "s--", label=f"best survives keep {k}")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("checkpoint (fraction of max_tokens)")
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    axes[0].set_title("how well a prefix ranks the final score")
    colors = {8: "tab:blue", 16: "tab:orange", 32: "tab:green"}
    for name, arm in result["arms"].items():
        s = arm["summary"]
        c = colors.get(arm["N"], "gray")
        marker = "o" if name.startswith("plain") else ("^" if "_over" in name else ".")
        size = 60 if name.startswith("plain") else 12
        axes[1].scatter(s["mean_tokens"], s["mean_score"], color=c, marker=marker, s=size)
    axes[1].set_xlabel("generated tokens per request")
    axes[1].set_ylabel("chosen final weighted score")
    axes[1].set_title("replay: o plain BoN, . ER, ^ over-sampled; N = 8 / 16 / 32", fontsize=10)
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", default=str(Path(__file__).with_name("natural_prompts.jsonl")))
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--budgets", default="8,16,32")
    ap.add_argument("--out", default="benchmarks/results/partial_ranking/partial_ranking.json")
    ap.add_argument("--samples", help="reuse a previous run's samples (its json) instead of sampling")
    args = ap.parse_args()
    checkpoints = sorted({max(1, round(f * args.max_tokens)) for f in FRACTIONS})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.samples:
        rows = json.loads(Path(args.samples).read_text())["samples"]
    else:
        rows, tok = sample(args.model, prompts(Path(args.prompts)), args.candidates, args.max_tokens)
        t0 = time.perf_counter()
        score(rows, tok, checkpoints)
        print(f"scored in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    result = analyse(rows, args.max_tokens, checkpoints, [int(b) for b in args.budgets.split(",")])
    result["config"] = {
        "weights": WEIGHTS,
        "max_tokens": args.max_tokens,
        "candidates": args.candidates,
        "checkpoints": checkpoints,
        "model": args.model,
        "command": " ".join(sys.argv),
    }
    result["samples"] = rows
    out.write_text(json.dumps(result))
    plot(result, out.with_suffix(".png"))
    print(f"at cap {result['fraction_at_cap']:.1%}; lengths {result['length_quantiles']}")
    for cp, r in result["ranking"].items():
        survives = {k: round(v["mean"], 3) for k, v in r["best_survives"].items()}
        print(f"checkpoint {cp}: spearman {r['spearman_mean']:.3f} {r['spearman_ci95']} best survives {survives}")


if __name__ == "__main__":
    main()
