"""``iama probe CONFIG``: measure the base model before training on it, and predict the optimum.

A reward's target that the base never samples cannot be learned, and a cap that most samples
hit changes what a length reward rewards. So before any training, sample the config's base
model on its prompts at a generous cap and report what the rewards will see: the completion
lengths (with the fraction cut at the cap), each reward's distribution, and for rewards that
depend on a completion only through one scalar (length, the answered number) that scalar's
distribution. When every task's reward is such a function of one shared scalar, the exact
KL-regularised optima of IAMA and of linear GRPO on the base's marginal follow
(:mod:`iama.optimum`), at the config's β and at given KLs: the prediction training is
compared against.

Writes ``probe.json`` (summary, prediction and every sample's scalar, length and rewards) and
``probe.png`` (histograms, predicted optima overlaid).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from iama.files import atomic_write_json
from iama.objective import aggregation_value, linear_reward_weights
from iama.optimum import Marginal, Optimum, beta_for_kl, iama_optimum, linear_optimum, task_values
from iama.rewards import RewardSet, bind_tokenizer, weighted_score
from iama.rewards.normalization import MIN_STD, degenerate_warning, fit_stats
from iama_trainer.config import TrainConfig

log = logging.getLogger("iama.probe")

QUANTILES = (0.05, 0.2, 0.5, 0.8, 0.95)
TRUNCATION_WARNING = 0.05


def json_values(x: np.ndarray) -> list[Any]:
    """``x`` (any shape) as nested lists for JSON, NaN ("no number") as null."""
    arr = np.asarray(x, dtype=object)
    arr[~np.isfinite(np.asarray(x, dtype=np.float64))] = None
    return arr.tolist()


def describe(x: np.ndarray) -> dict[str, Any]:
    """Mean, std, min, max and quantiles of the finite values, with the count of the others."""
    finite = x[np.isfinite(x)]
    out: dict[str, Any] = {"count": int(x.size), "missing": int(x.size - finite.size)}
    if finite.size:
        out |= {
            "mean": float(finite.mean()),
            "std": float(finite.std()),
            "min": float(finite.min()),
            "max": float(finite.max()),
            "quantiles": {f"p{round(q * 100)}": float(np.quantile(finite, q)) for q in QUANTILES},
        }
    return out


def shared_scalar(rewards: RewardSet, names: list[str]) -> str | None:
    """The scalar every one of ``names`` depends on alone, or None if they do not share one."""
    scalars = rewards.scalar_rewards()
    kinds = {scalars[n].scalar_name if n in scalars else None for n in names}
    if len(kinds) != 1 or None in kinds:
        return None
    return kinds.pop()


def predict(
    cfg: TrainConfig,
    rewards: RewardSet,
    scalar: np.ndarray,
    kls: list[float],
    budgets: list[int],
) -> dict[str, Any]:
    """IAMA's and linear GRPO's exact optima on the base marginal of ``scalar``: at the config's
    β and at each KL in ``kls`` (matched), with g, each task's BoN values and the histogram."""
    base = Marginal.from_samples(scalar)
    tasks = list(cfg.objective.tasks)
    agg = cfg.objective.aggregation
    scalars = rewards.scalar_rewards()
    stats = rewards.stats if cfg.normalization.enabled else None
    columns = {n: scalars[n].of_scalar(base.values) for n in rewards.names if n in scalars}
    tr = np.stack([weighted_score(columns, t.weights, stats) for t in tasks])  # (m, K)
    weights = linear_reward_weights(cfg.objective)

    def solve_iama(beta: float) -> Optimum:
        return iama_optimum(base, tr, tasks, agg, beta)

    def solve_linear(beta: float) -> Optimum:
        return linear_optimum(base, tr, weights, tasks, agg, beta)

    def row(kind: str, o: Optimum) -> dict[str, Any]:
        return {
            "method": kind,
            "beta": o.beta,
            "kl": o.kl,
            "g": o.g,
            "converged": o.converged,
            "bon": {str(n): task_values(tr, tasks, o.probs, n).tolist() for n in budgets},
            "probs": o.probs.tolist(),
            "mean": float(np.nansum(base.values * o.probs) / o.probs[np.isfinite(base.values)].sum())
            if np.isfinite(base.values).any()
            else None,
        }

    rows = [row("iama", solve_iama(cfg.beta)), row("linear", solve_linear(cfg.beta))]
    for kl in kls:
        rows += [row("iama", beta_for_kl(solve_iama, kl)), row("linear", beta_for_kl(solve_linear, kl))]
    g0 = aggregation_value(task_values(tr, tasks, base.probs), agg)
    base_row = row("base", Optimum(base.probs, math.inf, 0.0, g0, g0, 0, True))
    return {
        "support": json_values(base.values),
        "tasks": [t.name or f"task{i}" for i, t in enumerate(tasks)],
        "note": "pooled over prompts: the optimum of the prompts' shared marginal, not per prompt",
        "rows": [base_row, *rows],
    }


def probe(
    cfg: TrainConfig,
    output_dir: Path,
    samples_per_prompt: int = 16,
    max_tokens: int | None = None,
    engine: str = "auto",
    kls: list[float] | None = None,
    budgets: list[int] | None = None,
) -> dict[str, Any]:
    """Sample the base, describe what the rewards see, predict the optima; write JSON + PNG."""
    from iama.models import resolve_model
    from iama_eval.evaluate import score_generations
    from iama_eval.generate import generate
    from iama_eval.run import resolve_engine
    from iama_eval.sweep import SweepEval
    from iama_trainer.data import load_prompts, to_trl_prompt

    output_dir.mkdir(parents=True, exist_ok=True)
    cap = max_tokens or 2 * cfg.max_completion_length
    budgets = budgets or [1, 2, 4, 8, 16]
    model_path = resolve_model(cfg.model)
    prompts = load_prompts(cfg.prompts)
    trl_prompts = [to_trl_prompt(p, cfg.prompts) for p in prompts]
    rewards = RewardSet(bind_tokenizer(cfg.rewards, model_path))
    rewards.warm_up()

    spec = SweepEval(max_tokens=cap, sampling=cfg.sampling, seed=cfg.seed)  # what generate() reads
    gen = generate(
        model_path,
        [str(p) for p in prompts],
        trl_prompts,
        samples_per_prompt,
        spec,
        resolve_engine(engine),
        output_dir / "generations.json",
    )
    raw = score_generations(rewards, trl_prompts, gen.completions, gen.token_lengths)  # (P, M) each
    lengths = np.asarray(gen.token_lengths, dtype=np.float64)
    truncated = lengths >= cap
    flat = [c for g in gen.completions for c in g]
    counts = [int(n) for g in gen.token_lengths for n in g]
    scalars = {name: fn.scalar(flat, counts) for name, fn in rewards.scalar_rewards().items()}  # name -> (P·M,)
    stats = {n: fit_stats(v) for n, v in raw.items()}
    rewards = rewards.with_stats(stats)

    task_names = sorted({n for t in cfg.objective.tasks for n in t.weights})
    normalized = cfg.normalization.enabled
    warnings = [w for n in task_names if (w := degenerate_warning(n, raw[n], normalized)) is not None]
    warnings += [
        f"reward {n!r} is constant on the base samples: it gives GRPO no signal (advantages are 0)"
        for n in task_names
        if float(np.std(raw[n])) <= MIN_STD
    ]
    if truncated.mean() > TRUNCATION_WARNING:
        warnings.append(
            f"{truncated.mean():.0%} of base samples are cut at the cap of {cap} tokens: the rewards score a "
            "prefix, not a finished answer (a length reward scores the cap); raise the cap or pick a task "
            "whose answers end by themselves"
        )
    summary: dict[str, Any] = {
        "model": model_path,
        "prompts": len(prompts),
        "samples_per_prompt": samples_per_prompt,
        "max_tokens": cap,
        "engine": resolve_engine(engine),
        "sampling": cfg.sampling.model_dump(),
        "length": describe(lengths.reshape(-1)) | {"truncated_fraction": float(truncated.mean())},
        "length_untruncated": describe(lengths[~truncated]),
        "rewards": {n: describe(v.reshape(-1)) | {"params": rewards.specs[n].params} for n, v in raw.items()},
        "scalars": {n: describe(v) | {"scalar": rewards.scalar_rewards()[n].scalar_name} for n, v in scalars.items()},
    }
    shared = shared_scalar(rewards, task_names)
    if shared is not None:
        x = scalars[task_names[0]]
        for name in task_names:  # targets the base never comes near cannot be learned
            target = rewards.specs[name].params.get("target")
            finite = x[np.isfinite(x)]
            if (
                target is not None
                and finite.size
                and not (np.quantile(finite, 0.01) <= target <= np.quantile(finite, 0.99))
            ):
                warnings.append(
                    f"reward {name!r}: target {target} lies outside the base's 1–99 % range of {shared} "
                    f"[{np.quantile(finite, 0.01):g}, {np.quantile(finite, 0.99):g}]"
                )
        summary["prediction"] = predict(cfg, rewards, x, kls or [], budgets) | {"scalar": shared}
    summary["warnings"] = warnings
    for w in warnings:
        log.warning("%s", w)
    summary["samples"] = {
        "prompt_index": [i for i, g in enumerate(gen.completions) for _ in g],
        "tokens": counts,
        "truncated": truncated.reshape(-1).tolist(),
        "scalars": {n: json_values(s) for n, s in scalars.items()},
        "rewards": {n: v.reshape(-1).tolist() for n, v in raw.items()},
        "completions": flat,
    }
    summary["figure"] = str(plot_probe(summary, output_dir / "probe.png"))
    atomic_write_json(output_dir / "probe.json", summary)
    return summary


def scalar_bins(values: np.ndarray, probs: np.ndarray, count: int = 40) -> np.ndarray:
    """Bin edges over the bulk of a marginal (up to its 85th percentile): a few huge values (a
    year, "1858") would otherwise squeeze everything else into one bar."""
    order = np.argsort(values)
    cdf = np.cumsum(probs[order]) / max(probs.sum(), 1e-12)
    hi = float(values[order][np.searchsorted(cdf, 0.85)]) if values.size else 1.0
    lo = float(values.min()) if values.size else 0.0
    return np.linspace(lo, max(hi, lo + 1.0), count + 1)


def binned(values: np.ndarray, probs: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Probability mass per bin, values outside the range clipped into the end bins."""
    mass, _ = np.histogram(np.clip(values, bins[0], bins[-1]), bins=bins, weights=probs)
    return mass


def plot_probe(summary: dict[str, Any], path: Path) -> Path:
    """Length histogram (truncated counted apart) and, for the shared scalar, the base marginal
    with the predicted IAMA and linear optima at each matched KL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = summary.get("prediction")
    fig, axes = plt.subplots(1, 2 if pred else 1, figsize=(11 if pred else 5.5, 3.8), squeeze=False)
    ax = axes[0][0]
    tokens = np.asarray(summary["samples"]["tokens"])
    trunc = np.asarray(summary["samples"]["truncated"], dtype=bool)
    bins = np.linspace(0, summary["max_tokens"], 33)
    ax.hist(
        [tokens[~trunc], tokens[trunc]],
        bins=bins,
        stacked=True,
        label=["ended", "cut at cap"],
        color=["tab:gray", "tab:orange"],
    )
    ax.set_xlabel("completion tokens")
    ax.set_ylabel("base samples")
    ax.set_title(f"base lengths ({summary['length']['truncated_fraction']:.0%} at the cap)")
    ax.legend(fontsize=8)
    if pred:
        ax = axes[0][1]
        support = np.array([np.nan if v is None else v for v in pred["support"]])
        ok = np.isfinite(support)
        base = pred["rows"][0]
        bins = scalar_bins(support[ok], np.asarray(base["probs"])[ok])
        colors = {"iama": "tab:red", "linear": "tab:blue"}
        mass0 = binned(support[ok], np.asarray(base["probs"])[ok], bins)
        ax.bar(bins[:-1], mass0, width=np.diff(bins), align="edge", color="lightgray", label="base")
        for r in pred["rows"][-2:]:  # the last matched-KL pair (or the config's β)
            mass = binned(support[ok], np.asarray(r["probs"])[ok], bins)
            ax.step(
                bins[:-1],
                mass,
                where="post",
                color=colors[r["method"]],
                label=f"{r['method']} optimum (KL {r['kl']:.2f}, g {r['g']:.3f})",
            )
        missing = 1 - float(np.sum(np.asarray(base["probs"])[ok]))
        note = f"; no value: {missing:.0%} of base" if missing > 0 else ""
        ax.set_xlabel(f"{pred['scalar']} (values beyond {bins[-1]:g} in the last bin{note})")
        ax.set_ylabel("probability")
        ax.set_title("base marginal and predicted optima")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
