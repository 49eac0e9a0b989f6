"""Scores → per (model, algorithm, N, weights) mean rewards, fronts, hypervolume, compute saving (pure).

Raw scores (prompts, M) per reward of each model go in; the rows and summary of ``iama eval``
come out. Selection uses the server's own rules on the weighted normalised score, through
:func:`iama_eval.values.selection_probs`: the expectation over which N of the M samples a
request would have drawn is exact for BoN and Monte Carlo for soft BoN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from iama.objective import Algorithm
from iama.pareto import compute_saving, hypervolume_2d
from iama.rewards import RewardSet, normalize_scores, weighted_sum
from iama_eval.values import selection_probs


@dataclass
class Row:
    model: str
    algorithm: Algorithm
    budget: int
    weights: dict[str, float]
    raw: dict[str, float]  # mean raw reward of the selected completion
    normalized: dict[str, float]
    weighted: float  # mean weighted normalised score of the selected completion
    mean_tokens: float


def weight_grid(names: list[str], points: int) -> list[dict[str, float]]:
    """Convex combinations of the first two rewards (the plotted trade-off)."""
    if len(names) < 2:
        return [{names[0]: 1.0}]
    a, b = names[:2]
    return [{a: round(1 - k / (points - 1), 6), b: round(k / (points - 1), 6)} for k in range(points)]


def evaluate_model(
    label: str,
    raw: dict[str, np.ndarray],
    lengths: np.ndarray,
    rewards: RewardSet,
    weights_list: list[dict[str, float]],
    budgets: list[int],
    algorithms: list[Algorithm],
    tau: float,
    seed: int,
) -> list[Row]:
    norm = normalize_scores(raw, rewards.stats)
    rows = []
    for weights in weights_list:
        w = rewards.validate_weights(weights)
        score = weighted_sum(norm, w)  # (prompts, M): the server's weighted normalised score
        for alg in algorithms:
            for n in budgets:
                sel = selection_probs(score, alg, n, tau, seed)  # (prompts, M): P(sample chosen)
                rows.append(
                    Row(
                        model=label,
                        algorithm=alg,
                        budget=n,
                        weights=w,
                        raw={k: float(np.mean(np.sum(sel * v, axis=1))) for k, v in raw.items()},
                        normalized={k: float(np.mean(np.sum(sel * v, axis=1))) for k, v in norm.items()},
                        weighted=float(np.mean(np.sum(sel * score, axis=1))),
                        mean_tokens=float(np.mean(np.sum(sel * lengths, axis=1))),
                    )
                )
    return rows


def summarize(rows: list[Row], names: list[str], baseline: str | None, candidate: str | None) -> dict[str, Any]:
    """Hypervolume (normalised rewards 1 and 2) per model/algorithm/N, and the compute saving."""
    out: dict[str, Any] = {"hypervolume": {}, "compute_saving": {}}
    if len(names) >= 2:
        a, b = names[:2]
        pts = np.array([[r.normalized[a], r.normalized[b]] for r in rows])
        ref = pts.min(axis=0) - 1e-9  # shared reference: comparable across models
        out["hypervolume_reference"] = ref.tolist()
        for key in sorted({(r.model, r.algorithm, r.budget) for r in rows}):
            sub = np.array(
                [[r.normalized[a], r.normalized[b]] for r in rows if (r.model, r.algorithm, r.budget) == key]
            )
            out["hypervolume"].setdefault(key[0], {}).setdefault(key[1], {})[str(key[2])] = hypervolume_2d(sub, ref)
    if baseline and candidate:
        for alg in sorted({r.algorithm for r in rows}):
            top = max(r.budget for r in rows)
            per_w = []
            for w in _unique_weights(rows):
                base = next(
                    r.weighted
                    for r in rows
                    if r.model == baseline and r.algorithm == alg and r.budget == top and r.weights == w
                )
                cand = {
                    r.budget: r.weighted for r in rows if r.model == candidate and r.algorithm == alg and r.weights == w
                }
                per_w.append({"weights": w, "baseline_at_max_n": base, "smallest_n": compute_saving(cand, base)})
            base_mean = float(np.mean([p["baseline_at_max_n"] for p in per_w]))
            cand_mean = {
                n: float(
                    np.mean([r.weighted for r in rows if r.model == candidate and r.algorithm == alg and r.budget == n])
                )
                for n in sorted({r.budget for r in rows})
            }
            out["compute_saving"][alg] = {
                "max_n": top,
                "baseline_mean_at_max_n": base_mean,
                "candidate_mean_by_n": cand_mean,
                "smallest_n_matching_on_average": compute_saving(cand_mean, base_mean),
                "per_weights": per_w,
            }
    return out


def trade_off_warnings(raw_by_model: dict[str, dict[str, np.ndarray]], names: list[str]) -> list[str]:
    """Flag a plotted pair of rewards that is (anti-)collinear over all samples.

    Then every Pareto point lies on one line (e.g. ``negative_sentiment`` = −``sentiment``), the
    "front" is a segment whose ends come from the extreme weight vectors, and hypervolume can
    fall as N grows: users should compare the objective or per-task values instead.
    """
    if len(names) < 2:
        return []
    a, b = names[:2]
    xa = np.concatenate([np.ravel(r[a]) for r in raw_by_model.values()])
    xb = np.concatenate([np.ravel(r[b]) for r in raw_by_model.values()])
    if xa.std() == 0 or xb.std() == 0:
        return [f"reward {a if xa.std() == 0 else b!r} is constant over all samples: the trade-off plot is degenerate"]
    corr = float(np.corrcoef(xa, xb)[0, 1])
    if abs(corr) > 0.99:
        return [
            f"rewards {a!r} and {b!r} are {'anti-' if corr < 0 else ''}collinear over all samples "
            f"(correlation {corr:+.3f}): the Pareto points lie on one line and hypervolume is not "
            "informative; compare the objective or the per-reward values instead"
        ]
    return []


def _unique_weights(rows: list[Row]) -> list[dict[str, float]]:
    seen: list[dict[str, float]] = []
    for r in rows:
        if r.weights not in seen:
            seen.append(r.weights)
    return seen
