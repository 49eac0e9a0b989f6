"""The KL-regularised optima of IAMA and linear GRPO predicted on a base model's marginal (pure).

When every task's reward depends on a completion through one shared scalar (its length, the
number it answers), the base model's samples of that scalar are a marginal on which
:mod:`iama.optimum` solves both objectives exactly. ``iama probe`` predicts before training;
the KL-path report overlays the same prediction at the KLs the runs reached.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from iama._arrays import FloatArray
from iama.objective import aggregation_value, linear_reward_weights
from iama.optimum import Marginal, Optimum, beta_for_kl, iama_optimum, linear_optimum, task_values
from iama.rewards import RewardSet, weighted_score
from iama_eval.distributions import json_values
from iama_trainer.config import TrainConfig


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
    scalar: FloatArray,
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

    solved: dict[float, Optimum] = {}

    def solve_iama(beta: float) -> Optimum:
        # memoised: every KL's bisection starts at the same bracket (its first solves repeat),
        # and a solve at small β runs to its step cap
        if beta not in solved:
            solved[beta] = iama_optimum(base, tr, tasks, agg, beta)
        return solved[beta]

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
