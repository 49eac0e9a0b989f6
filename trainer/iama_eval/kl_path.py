"""IAMA vs linear GRPO at matched KL: every snapshot of every run, evaluated with its KL.

A run's final model says little on its own: two methods that end at different KLs are not
comparable (more KL buys more reward for either). So each run saves its weights along training
(``snapshot_steps``), and here every snapshot is sampled on held-out prompts, scored, and its
sequence-level KL to the base measured on those same samples (:mod:`iama_eval.sequence_kl`).
The report then puts every metric against KL:

- the path: each method's g under its tasks' algorithms (and each user's BoN_N reward) against
  KL, per seed and averaged over seeds, with the optima :mod:`iama.optimum` predicts on the
  base's marginal;
- matched KL: at each IAMA snapshot's KL inside linear's range, linear's values interpolated
  along its own path, and the difference with a 95 % interval;
- the compute ratio: the smallest N at which linear's BoN_N reaches IAMA's g at the tasks' own N;
- N = 1 histograms of the scalar the rewards depend on (base, linear, IAMA; seeds pooled; "no
  value" and truncated counted apart), the predicted optimum overlaid.

Intervals come from one bootstrap that resamples prompts (shared by both methods: the same
held-out prompts) and, independently per method, seeds; interpolation happens inside each
draw. Everything is recomputed from ``path_scores.json``, the committed raw file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from iama.files import atomic_write_json
from iama.objective import Aggregation, Task, aggregation_value
from iama.rewards import RewardSet, bind_tokenizer

log = logging.getLogger("iama.sweep")

PATH_SCORES = "path_scores.json"


def evaluate_path(cfg: Any, runs: dict[str, Any], base_path: str) -> Path:
    """Sample, score and measure the KL of the base and every snapshot (and final model) of
    every run; append each point to ``path_scores.json`` as it finishes (so it resumes)."""
    from iama_eval.evaluate import score_generations
    from iama_eval.generate import generate
    from iama_eval.probe import json_values, shared_scalar
    from iama_eval.run import resolve_engine
    from iama_eval.sequence_kl import load_for_scoring, sequence_logprobs
    from iama_trainer.callbacks import SNAPSHOTS, list_snapshots
    from iama_trainer.data import load_prompts, to_trl_prompt

    ev = cfg.eval
    out = cfg.output_dir
    engine = resolve_engine(ev.engine)
    prompts = load_prompts(ev.prompts)
    trl_prompts = [to_trl_prompt(p, ev.prompts) for p in prompts]
    first = next(iter(runs.values()))
    rewards = RewardSet(bind_tokenizer(first.rewards, base_path))
    rewards.warm_up()
    task_names = sorted({n for t in first.objective.tasks for n in t.weights})
    scalar_name = shared_scalar(rewards, task_names)
    scalar_fn = rewards.scalar_rewards()[task_names[0]] if scalar_name else None

    path_file = out / PATH_SCORES
    saved = json.loads(path_file.read_text()) if path_file.is_file() else {}
    points: dict[str, Any] = saved.get("points", {})
    base: tuple[Any, Any] | None = None  # loaded on the first point that needs it (a resume may need none)
    todo: list[tuple[str, str, int | None, int, str]] = [("base", "base", None, 0, base_path)]
    for label, run_cfg in runs.items():
        snaps = {step: str(p) for step, p in list_snapshots(run_cfg.output_dir / SNAPSHOTS).items()}
        final = run_cfg.output_dir / "model"
        if final.is_dir() and run_cfg.steps not in snaps:
            snaps[run_cfg.steps] = str(final)
        for step, path in sorted(snaps.items()):
            if ev.steps is None or step in ev.steps:
                todo.append((label, run_cfg.objective.type, run_cfg.seed, step, path))
    for label, method, seed, step, path in todo:
        key = f"{label}@{step}"
        if key in points:
            continue
        log.info("evaluating %s at step %d", label, step)
        cache = out / "generations" / label / f"step-{step:06d}.json"
        gen = generate(path, [str(p) for p in prompts], trl_prompts, ev.samples_per_prompt, ev, engine, cache)
        raw = score_generations(rewards, trl_prompts, gen.completions, gen.token_lengths)
        if base is None:
            base = load_for_scoring(base_path)
        base_model, tok = base
        temperature = ev.sampling.temperature
        kl_ids = [group[: ev.kl_samples] for group in gen.token_ids]  # (P, ≤ kl_samples)
        if label == "base":
            ratio = np.zeros((len(prompts), len(kl_ids[0])))
        else:
            ref_lp = sequence_logprobs(base_model, tok, trl_prompts, kl_ids, temperature)
            policy, _ = load_for_scoring(path)
            ratio = sequence_logprobs(policy, tok, trl_prompts, kl_ids, temperature) - ref_lp
            del policy
        flat = [c for g in gen.completions for c in g]
        counts = [n for g in gen.token_lengths for n in g]
        scalar = scalar_fn.scalar(flat, counts).reshape(len(prompts), -1) if scalar_fn is not None else None
        points[key] = {
            "label": label,
            "method": method,
            "seed": seed,
            "step": step,
            "scores": {k: v.tolist() for k, v in raw.items()},
            "tokens": gen.token_lengths,
            "truncated": (np.asarray(gen.token_lengths) >= ev.max_tokens).tolist(),
            "scalar": json_values(scalar) if scalar is not None else None,
            "log_ratio": ratio.tolist(),
            "completions": gen.completions,
        }
        atomic_write_json(
            path_file,
            {"prompts": [str(p) for p in prompts], "scalar": scalar_name, "points": points},
            indent=None,
        )
    return path_file


# ---- report -------------------------------------------------------------------------------


def _task_values(point: dict[str, Any], tasks: list[Task], budgets: list[int], seed: int) -> np.ndarray:
    from iama_eval.sweep import per_prompt_task_values

    return per_prompt_task_values({k: np.asarray(v) for k, v in point["scores"].items()}, tasks, budgets, seed)


def _g_by_budget(values: np.ndarray, agg: Aggregation) -> np.ndarray:
    """(..., tasks, budgets) task means → (..., budgets): g with every task at budget N."""
    flat = values.reshape(-1, values.shape[-2], values.shape[-1])
    g = np.array([[aggregation_value(v[:, b], agg) for b in range(v.shape[1])] for v in flat])
    return g.reshape(*values.shape[:-2], values.shape[-1])


def _interp(kl_path: np.ndarray, y_path: np.ndarray, kl: float) -> float:
    """y at ``kl`` along a path sorted by KL; NaN outside the path's KL range."""
    order = np.argsort(kl_path)
    x, y = kl_path[order], y_path[order]
    if kl < x[0] or kl > x[-1]:
        return float("nan")
    return float(np.interp(kl, x, y))


def report_path(cfg: Any) -> dict[str, Any]:
    """Tables and figures of the KL path from ``path_scores.json`` alone."""
    from iama_trainer.config import load_config

    out = cfg.output_dir
    data = json.loads((out / PATH_SCORES).read_text())
    points = data["points"]
    base_cfg = load_config(cfg.base, dict(cfg.set))
    tasks = list(base_cfg.objective.tasks)
    agg = base_cfg.objective.aggregation
    budgets = list(cfg.eval.budgets)
    names = [t.name or f"task{i}" for i, t in enumerate(tasks)]
    own_n = int(tasks[0].n) if tasks[0].algorithm == "bon" else 1
    if own_n not in budgets:
        raise ValueError(f"eval.budgets must include the tasks' own N = {own_n}")
    nb = budgets.index(own_n)

    base = points["base@0"]
    v0 = _task_values(base, tasks, budgets, cfg.eval.seed)  # (tasks, budgets, prompts)
    methods = [m for m in cfg.objective_types if any(p["method"] == m for p in points.values())]
    arrays: dict[str, dict[str, Any]] = {}
    for method in methods:
        seeds = sorted({p["seed"] for p in points.values() if p["method"] == method})
        steps = sorted(
            set.intersection(
                *[{p["step"] for p in points.values() if p["method"] == method and p["seed"] == s} for s in seeds]
            )
        )
        by = {(p["seed"], p["step"]): p for p in points.values() if p["method"] == method}
        values = np.stack(
            [np.stack([v0] + [_task_values(by[(s, t)], tasks, budgets, cfg.eval.seed) for t in steps]) for s in seeds]
        )  # (seeds, 1 + steps, tasks, budgets, prompts)
        kl = np.stack(
            [
                np.stack([np.zeros(v0.shape[-1])] + [np.mean(by[(s, t)]["log_ratio"], axis=1) for t in steps])
                for s in seeds
            ]
        )  # (seeds, 1 + steps, prompts)
        arrays[method] = {"seeds": seeds, "steps": [0, *steps], "values": values, "kl": kl}

    def stats(idx_prompts: np.ndarray, idx_seeds: dict[str, np.ndarray]) -> dict[str, Any]:
        """Per method: path means (steps) of KL, task values, g by N; plus matched-KL comparisons."""
        res: dict[str, Any] = {}
        for method, a in arrays.items():
            v = a["values"][idx_seeds[method]][..., idx_prompts].mean(axis=(0, -1))  # (steps, tasks, budgets)
            k = a["kl"][idx_seeds[method]][..., idx_prompts].mean(axis=(0, -1))  # (steps,)
            res[method] = {"kl": k, "values": v, "g": _g_by_budget(v, agg)}  # g: (steps, budgets)
        if "iama" in res and "linear" in res:
            lin, iam = res["linear"], res["iama"]
            matched = []
            for t, kl in enumerate(iam["kl"]):
                if t == 0:
                    continue
                lin_g = np.array([_interp(lin["kl"], lin["g"][:, b], kl) for b in range(len(budgets))])
                matched.append({"kl": kl, "iama_g": iam["g"][t], "linear_g": lin_g})
            res["matched"] = matched
        return res

    rng = np.random.default_rng(0)
    prompts_n = int(v0.shape[-1])
    point = stats(np.arange(prompts_n), {m: np.arange(len(a["seeds"])) for m, a in arrays.items()})
    draws = [
        stats(
            rng.integers(0, prompts_n, size=prompts_n),
            {m: rng.integers(0, len(a["seeds"]), size=len(a["seeds"])) for m, a in arrays.items()},
        )
        for _ in range(cfg.bootstrap)
    ]

    def ci(get: Any) -> list[float]:
        xs = np.array([get(d) for d in draws], dtype=np.float64)
        xs = xs[np.isfinite(xs)]
        return [float(np.percentile(xs, 2.5)), float(np.percentile(xs, 97.5))] if xs.size else [float("nan")] * 2

    path_rows = []
    for method, a in arrays.items():
        for t, step in enumerate(a["steps"]):
            row: dict[str, Any] = {
                "method": method,
                "step": step,
                "kl": {"mean": float(point[method]["kl"][t]), "ci95": ci(lambda d, m=method, t=t: d[m]["kl"][t])},
                "kl_per_seed": a["kl"][:, t].mean(axis=-1).tolist(),
            }
            for b, n in enumerate(budgets):
                for i, name in enumerate(names):
                    row[f"{name}@{n}"] = {
                        "mean": float(point[method]["values"][t, i, b]),
                        "ci95": ci(lambda d, m=method, t=t, i=i, b=b: d[m]["values"][t, i, b]),
                    }
                row[f"g@{n}"] = {
                    "mean": float(point[method]["g"][t, b]),
                    "ci95": ci(lambda d, m=method, t=t, b=b: d[m]["g"][t, b]),
                }
            path_rows.append(row)

    matched_rows = []
    for j, mrow in enumerate(point.get("matched", [])):
        entry: dict[str, Any] = {"kl": float(mrow["kl"])}
        for b, n in enumerate(budgets):
            entry[f"iama_g@{n}"] = float(mrow["iama_g"][b])
            entry[f"linear_g@{n}"] = float(mrow["linear_g"][b])
        diff = float(mrow["iama_g"][nb] - mrow["linear_g"][nb])
        entry[f"difference_g@{own_n}"] = {
            "mean": diff,
            "ci95": ci(lambda d, j=j: d["matched"][j]["iama_g"][nb] - d["matched"][j]["linear_g"][nb]),
        }
        reach = [n for b, n in enumerate(budgets) if mrow["linear_g"][b] >= mrow["iama_g"][nb]]
        entry["linear_smallest_n_reaching_iama"] = min(reach) if reach else None
        matched_rows.append(entry)

    summary: dict[str, Any] = {
        "tasks": names,
        "budgets": budgets,
        "own_n": own_n,
        "seeds": {m: a["seeds"] for m, a in arrays.items()},
        "scalar": data.get("scalar"),
        "bootstrap": cfg.bootstrap,
        "path": path_rows,
        "matched_kl": matched_rows,
        "note": "95 % intervals resample held-out prompts (shared) and seeds (per method); matched rows "
        "interpolate linear's path at each IAMA snapshot's KL (NaN outside linear's KL range)",
    }
    summary["prediction"] = _prediction(base_cfg, data, arrays)
    summary["figures"] = [
        str(_plot_path(summary, out / "kl_path.png")),
        str(_plot_bon(summary, out / "bon_by_n.png")),
    ]
    hist = _plot_histograms(data, arrays, summary, out / "histograms.png")
    if hist is not None:
        summary["figures"].append(str(hist))
    _write_csv(summary, out / "kl_path.csv")
    atomic_write_json(out / "kl_path.json", summary)
    return summary


def _prediction(base_cfg: Any, data: dict[str, Any], arrays: dict[str, Any]) -> dict[str, Any] | None:
    """The optima predicted on the base's held-out marginal of the scalar, at the KLs reached."""
    if not data.get("scalar"):
        return None
    from iama.models import resolve_model
    from iama_eval.probe import predict

    rewards = RewardSet(bind_tokenizer(base_cfg.rewards, resolve_model(base_cfg.model)))
    x = np.array([np.nan if v is None else v for row in data["points"]["base@0"]["scalar"] for v in row])
    reached = [float(a["kl"][:, -1].mean()) for a in arrays.values()]
    kls = sorted({round(k, 4) for k in reached if k > 0} | {0.05, 0.1, 0.2, 0.5, 1.0})
    pred = predict(base_cfg, rewards, x, kls, [1, 2, 4, 8, 16])
    return pred


def _write_csv(summary: dict[str, Any], path: Path) -> None:
    import csv

    cols = [k for k in summary["path"][0] if k not in ("method", "step", "kl", "kl_per_seed")]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["method", "step", "kl_mean", "kl_lo", "kl_hi", *[f"{c}_{s}" for c in cols for s in ("mean", "lo", "hi")]]
        )
        for r in summary["path"]:
            cells = [r["method"], r["step"], r["kl"]["mean"], *r["kl"]["ci95"]]
            for c in cols:
                cells += [r[c]["mean"], *r[c]["ci95"]]
            w.writerow(cells)


COLORS = {"iama": "tab:red", "linear": "tab:blue", "base": "black"}


def _plot_path(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iama_eval.plots import interval_errorbar

    n = summary["own_n"]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method in summary["seeds"]:
        rows = [r for r in summary["path"] if r["method"] == method]
        interval_errorbar(
            ax,
            [r["kl"] for r in rows],
            [r[f"g@{n}"] for r in rows],
            color=COLORS[method],
            label=f"{method} (mean of {len(summary['seeds'][method])} seeds, by step)",
        )
    pred = summary.get("prediction")
    if pred:
        for method in ("iama", "linear"):
            pts = sorted((r["kl"], r["g"]) for r in pred["rows"] if r["method"] == method)
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                ls="--",
                color=COLORS[method],
                alpha=0.6,
                label=f"{method} optimum (predicted)",
            )
    ax.set_xscale("symlog", linthresh=0.05)
    ax.set_xlabel("sequence KL to the base (held-out samples)")
    ax.set_ylabel(f"g under BoN_{n} (held-out prompts)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_bon(summary: dict[str, Any], path: Path) -> Path:
    """Each user's reward under BoN_N of each method's last snapshot (and the base)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets, names = summary["budgets"], summary["tasks"]
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4.2 * (len(names) + 1), 3.8), squeeze=False)
    finals = {
        m: max((r for r in summary["path"] if r["method"] == m), key=lambda r: r["step"]) for m in summary["seeds"]
    }
    first = next(iter(summary["seeds"]))
    shown = {"base": next(r for r in summary["path"] if r["method"] == first and r["step"] == 0), **finals}
    for ax, name in zip(axes[0], [*names, "g"], strict=True):
        for label, r in shown.items():
            y = np.array([r[f"{name}@{n}"]["mean"] for n in budgets])
            err = np.abs(np.array([r[f"{name}@{n}"]["ci95"] for n in budgets]).T - y)
            kl = r["kl"]["mean"]
            ax.errorbar(
                budgets,
                y,
                yerr=err,
                marker="o",
                ms=4,
                capsize=2,
                color=COLORS.get(label, "gray"),
                label=f"{label} (KL {kl:.2f})" if label != "base" else "base",
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("N (best-of-N with this user's reward)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_histograms(data: dict[str, Any], arrays: dict[str, Any], summary: dict[str, Any], path: Path) -> Path | None:
    """N = 1 histograms of the scalar at each method's last snapshot, seeds pooled."""
    if not data.get("scalar"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = data["points"]
    pools: dict[str, np.ndarray] = {
        "base": np.array([np.nan if v is None else v for r in points["base@0"]["scalar"] for v in r])
    }
    for method, a in arrays.items():
        last = a["steps"][-1]
        vals = [
            v for p in points.values() if p["method"] == method and p["step"] == last for r in p["scalar"] for v in r
        ]
        pools[f"{method} (step {last})"] = np.array([np.nan if v is None else v for v in vals])
    finite = np.concatenate([x[np.isfinite(x)] for x in pools.values()])
    hi = float(np.percentile(finite, 99)) if finite.size else 1.0
    bins = np.linspace(min(0.0, float(finite.min()) if finite.size else 0.0), max(hi, 1.0), 41)
    fig, axes = plt.subplots(1, len(pools), figsize=(4.2 * len(pools), 3.6), squeeze=False, sharey=True)
    pred = summary.get("prediction")
    for ax, (label, x) in zip(axes[0], pools.items(), strict=True):
        ok = np.isfinite(x)
        over = int(np.sum(x[ok] > bins[-1]))
        ax.hist(
            np.clip(x[ok], bins[0], bins[-1]),
            bins=bins,
            weights=np.full(ok.sum(), 1 / x.size),
            color=COLORS.get(label.split()[0], "gray"),
            alpha=0.7,
        )
        method = label.split()[0]
        if pred and method in ("iama", "linear"):
            kl = float(arrays[method]["kl"][:, -1].mean())
            cands = [r for r in pred["rows"] if r["method"] == method]
            r = min(cands, key=lambda r: abs(r["kl"] - kl))
            support = np.array([np.nan if v is None else v for v in pred["support"]])
            sel = np.isfinite(support)
            mass, _ = np.histogram(
                np.clip(support[sel], bins[0], bins[-1]), bins=bins, weights=np.asarray(r["probs"])[sel]
            )
            ax.step(bins[:-1], mass, where="post", color="k", lw=1, label=f"predicted optimum, KL {r['kl']:.2f}")
            ax.legend(fontsize=7)
        ax.set_title(f"{label}: {1 - ok.mean():.0%} no value, {over / x.size:.0%} > {bins[-1]:.0f}", fontsize=9)
        ax.set_xlabel(f"{data['scalar']} (N = 1 samples, held-out prompts)")
    axes[0][0].set_ylabel("fraction of samples")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
