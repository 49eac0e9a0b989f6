"""Methods compared at matched KL: the KL path's means, intervals and matched rows (pure).

The points of ``path_scores.json`` go in (every snapshot of every run: raw scores and
per-sample log-ratios to the base); the tables of ``kl_path.json`` come out. Per method, a
:class:`MethodPath` stacks task values and KL by (seed, step, prompt); :func:`path_statistics`
averages them and, where both methods are present, interpolates linear's path at each IAMA
snapshot's KL (:func:`interp_at`). Intervals come from one bootstrap
(:func:`iama.bootstrap.seed_prompt_resamples`) that resamples prompts (shared by both
methods: the same held-out prompts) and, independently per method, seeds; the interpolation
happens inside each draw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from iama._arrays import FloatArray
from iama.bootstrap import IntArray, seed_prompt_resamples
from iama.objective import Aggregation, Task
from iama_eval.values import g_by_budget, per_prompt_task_values

PathStats = dict[str, Any]  # method -> {"kl", "values", "g"}; "matched" -> list of rows


@dataclass(frozen=True)
class MethodPath:
    """One method's snapshots, step 0 being the base (shared by every method)."""

    seeds: list[int]
    steps: list[int]  # [0, *snapshot steps every seed has]
    values: FloatArray  # (seeds, steps, tasks, budgets, prompts): task values under BoN_N
    kl: FloatArray  # (seeds, steps, prompts): mean sequence log-ratio of each prompt's samples


def task_values(point: dict[str, Any], tasks: list[Task], budgets: list[int], seed: int) -> FloatArray:
    """(tasks, budgets, prompts) of one point of ``path_scores.json``."""
    return per_prompt_task_values({k: np.asarray(v) for k, v in point["scores"].items()}, tasks, budgets, seed)


def method_paths(
    points: dict[str, dict[str, Any]], methods: list[str], tasks: list[Task], budgets: list[int], seed: int
) -> dict[str, MethodPath]:
    """Each method present in ``points``, over the snapshot steps that all its seeds reached."""
    v0 = task_values(points["base@0"], tasks, budgets, seed)  # (tasks, budgets, prompts)
    out: dict[str, MethodPath] = {}
    for method in methods:
        if not any(p["method"] == method for p in points.values()):
            continue
        seeds = sorted({p["seed"] for p in points.values() if p["method"] == method})
        steps = sorted(
            set.intersection(
                *[{p["step"] for p in points.values() if p["method"] == method and p["seed"] == s} for s in seeds]
            )
        )
        by = {(p["seed"], p["step"]): p for p in points.values() if p["method"] == method}
        values = np.stack(
            [np.stack([v0] + [task_values(by[(s, t)], tasks, budgets, seed) for t in steps]) for s in seeds]
        )  # (seeds, 1 + steps, tasks, budgets, prompts)
        kl = np.stack(
            [
                np.stack([np.zeros(v0.shape[-1])] + [np.mean(by[(s, t)]["log_ratio"], axis=1) for t in steps])
                for s in seeds
            ]
        )  # (seeds, 1 + steps, prompts)
        out[method] = MethodPath(seeds, [0, *steps], values, kl)
    return out


def interp_at(kl_path: FloatArray, y_path: FloatArray, kl: float) -> float:
    """y at ``kl`` along a path sorted by KL; NaN outside the path's KL range."""
    order = np.argsort(kl_path)
    x, y = kl_path[order], y_path[order]
    if kl < x[0] or kl > x[-1]:
        return float("nan")
    return float(np.interp(kl, x, y))


def path_statistics(
    paths: dict[str, MethodPath], agg: Aggregation, idx_prompts: IntArray, idx_seeds: dict[str, IntArray]
) -> PathStats:
    """Per method: path means (steps) of KL, task values, g by N over the given prompt and seed
    indices; plus, with both methods, linear's g interpolated at each IAMA snapshot's KL."""
    res: PathStats = {}
    for method, a in paths.items():
        v = a.values[idx_seeds[method]][..., idx_prompts].mean(axis=(0, -1))  # (steps, tasks, budgets)
        k = a.kl[idx_seeds[method]][..., idx_prompts].mean(axis=(0, -1))  # (steps,)
        res[method] = {"kl": k, "values": v, "g": g_by_budget(v, agg)}  # g: (steps, budgets)
    if "iama" in res and "linear" in res:
        lin, iam = res["linear"], res["iama"]
        budgets = lin["g"].shape[1]
        res["matched"] = [
            {
                "kl": kl,
                "iama_g": iam["g"][t],
                "linear_g": np.array([interp_at(lin["kl"], lin["g"][:, b], kl) for b in range(budgets)]),
            }
            for t, kl in enumerate(iam["kl"])
            if t > 0
        ]
    return res


def bootstrap_path(paths: dict[str, MethodPath], agg: Aggregation, draws: int) -> tuple[PathStats, list[PathStats]]:
    """The point statistics and ``draws`` bootstrap replicates (prompts shared, seeds per method)."""
    prompts = next(iter(paths.values())).kl.shape[-1]
    point = path_statistics(paths, agg, np.arange(prompts), {m: np.arange(len(a.seeds)) for m, a in paths.items()})
    seeds = {m: len(a.seeds) for m, a in paths.items()}
    resampled = [
        path_statistics(paths, agg, p, s)
        for p, s in seed_prompt_resamples(prompts, seeds, draws, np.random.default_rng(0))
    ]
    return point, resampled


def ci95(draws: list[PathStats], get: Callable[..., float]) -> list[float]:
    """2.5 and 97.5 percentiles of ``get(draw)`` over the draws, non-finite draws (no overlap) left
    out. ``get`` may bind its indices as defaults (``lambda d, t=t: ...``), hence ``...``."""
    xs = np.array([get(d) for d in draws], dtype=np.float64)
    xs = xs[np.isfinite(xs)]
    return [float(np.percentile(xs, 2.5)), float(np.percentile(xs, 97.5))] if xs.size else [float("nan")] * 2


def path_rows(
    paths: dict[str, MethodPath], point: PathStats, draws: list[PathStats], names: list[str], budgets: list[int]
) -> list[dict[str, Any]]:
    """One row per (method, step): KL, each task at BoN_N and g at every N, each with its interval."""
    rows = []
    for method, a in paths.items():
        for t, step in enumerate(a.steps):
            row: dict[str, Any] = {
                "method": method,
                "step": step,
                "kl": {
                    "mean": float(point[method]["kl"][t]),
                    "ci95": ci95(draws, lambda d, m=method, t=t: d[m]["kl"][t]),
                },
                "kl_per_seed": a.kl[:, t].mean(axis=-1).tolist(),
            }
            for b, n in enumerate(budgets):
                for i, name in enumerate(names):
                    row[f"{name}@{n}"] = {
                        "mean": float(point[method]["values"][t, i, b]),
                        "ci95": ci95(draws, lambda d, m=method, t=t, i=i, b=b: d[m]["values"][t, i, b]),
                    }
                row[f"g@{n}"] = {
                    "mean": float(point[method]["g"][t, b]),
                    "ci95": ci95(draws, lambda d, m=method, t=t, b=b: d[m]["g"][t, b]),
                }
            rows.append(row)
    return rows


def matched_rows(point: PathStats, draws: list[PathStats], budgets: list[int], own_n: int) -> list[dict[str, Any]]:
    """At each IAMA snapshot's KL: both methods' g by N, the difference at the tasks' own N with
    its interval, and the smallest N at which linear's BoN_N reaches IAMA's g at own N."""
    nb = budgets.index(own_n)
    rows = []
    for j, mrow in enumerate(point.get("matched", [])):
        entry: dict[str, Any] = {"kl": float(mrow["kl"])}
        for b, n in enumerate(budgets):
            entry[f"iama_g@{n}"] = float(mrow["iama_g"][b])
            entry[f"linear_g@{n}"] = float(mrow["linear_g"][b])
        diff = float(mrow["iama_g"][nb] - mrow["linear_g"][nb])
        entry[f"difference_g@{own_n}"] = {
            "mean": diff,
            "ci95": ci95(draws, lambda d, j=j: d["matched"][j]["iama_g"][nb] - d["matched"][j]["linear_g"][nb]),
        }
        reach = [n for b, n in enumerate(budgets) if mrow["linear_g"][b] >= mrow["iama_g"][nb]]
        entry["linear_smallest_n_reaching_iama"] = min(reach) if reach else None
        rows.append(entry)
    return rows
