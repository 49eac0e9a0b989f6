"""The per-sample reward non-linear GRPO trains on, from the raw rewards of a gathered batch.

Pure numpy, so it is tested without a model: raw rewards (B, K) → normalised → task rewards
r_i = Σ_k w_ik·reward_k (m, B) → either the first variation of g(R_1..R_m) per group (IAMA) or
the weighted task reward itself (the linear GRPO baseline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from iama.objective import Objective, aggregation_value, linear_reward_weights
from iama.rewards.normalization import RewardStats, normalize
from iama.variations import grouped_first_variation, task_value


@dataclass(frozen=True)
class Surrogate:
    rewards: np.ndarray  # (B,) what GRPO normalises into advantages
    task_rewards: np.ndarray  # (m, B) r_i per sample, normalised
    group_values: np.ndarray  # (groups, m) R_i on each group's empirical distribution
    objective_values: np.ndarray  # (groups,) g(R_1..R_m) per group


def task_rewards(
    raw: np.ndarray, reward_names: Sequence[str], objective: Objective, stats: Mapping[str, RewardStats]
) -> np.ndarray:
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != len(reward_names):
        raise ValueError(f"raw rewards must be (batch, {len(reward_names)}), got {raw.shape}")
    if not np.all(np.isfinite(raw)):
        raise ValueError("raw rewards must be finite")
    col = {n: normalize(raw[:, k], stats.get(n)) for k, n in enumerate(reward_names)}
    out = np.zeros((len(objective.tasks), raw.shape[0]))
    for i, task in enumerate(objective.tasks):
        for name, w in task.weights.items():
            out[i] += w * col[name]
    return out


def compute_surrogate(
    raw: np.ndarray,
    reward_names: Sequence[str],
    objective: Objective,
    objective_type: str,
    stats: Mapping[str, RewardStats],
    group_size: int,
) -> Surrogate:
    tr = task_rewards(raw, reward_names, objective, stats)
    b = tr.shape[1]
    if b % group_size:
        raise ValueError(f"batch of {b} is not a whole number of groups of {group_size}")
    groups = b // group_size
    values = np.array(
        [
            [task_value(tr[i, g * group_size : (g + 1) * group_size], t) for i, t in enumerate(objective.tasks)]
            for g in range(groups)
        ]
    )
    obj = np.array([aggregation_value(v, objective.aggregation) for v in values])
    if objective_type == "linear":
        rewards = linear_reward_weights(objective) @ tr
    elif objective_type == "iama":
        rewards = grouped_first_variation(tr, group_size, objective.tasks, objective.aggregation)
    else:
        raise ValueError(f"objective type must be 'iama' or 'linear', got {objective_type!r}")
    return Surrogate(rewards, tr, values, obj)
