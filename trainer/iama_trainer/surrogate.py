"""The per-sample reward non-linear GRPO trains on, from the raw rewards of a gathered batch.

Pure numpy, so it is tested without a model: raw rewards (B, K) → normalised and weighted into
task rewards r_i (m, B) by :func:`iama.rewards.weighted_score` (the server's formula) → either
the first variation of g(R_1..R_m) per group (IAMA) or the weighted task reward itself (the
linear GRPO baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iama.objective import Objective, ObjectiveType, aggregation_value, linear_reward_weights
from iama.rewards import RewardSet, weighted_score
from iama.variations import grouped_first_variation, task_value


@dataclass(frozen=True)
class SurrogateSpec:
    """Everything that turns raw rewards into the trained reward; travels from the config to
    TRL's hook (``grpo.py``) as one object."""

    rewards: RewardSet  # column order of the raw rewards, and their normalisation statistics
    objective: Objective
    objective_type: ObjectiveType = "iama"


@dataclass(frozen=True)
class Surrogate:
    rewards: np.ndarray  # (B,) what GRPO normalises into advantages
    task_rewards: np.ndarray  # (m, B) r_i per sample, normalised
    group_values: np.ndarray  # (groups, m) R_i on each group's empirical distribution
    objective_values: np.ndarray  # (groups,) g(R_1..R_m) per group


def task_rewards(raw: np.ndarray, spec: SurrogateSpec) -> np.ndarray:
    """(m, B): task i's reward ``r_i = Σ_k w_ik·normalize(reward_k)`` for every sample."""
    names = spec.rewards.names
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != len(names):
        raise ValueError(f"raw rewards must be (batch, {len(names)}), got {raw.shape}")
    if not np.all(np.isfinite(raw)):
        raise ValueError("raw rewards must be finite")
    columns = {name: raw[:, k] for k, name in enumerate(names)}
    stats = spec.rewards.stats
    return np.stack([weighted_score(columns, task.weights, stats) for task in spec.objective.tasks])


def compute_surrogate(raw: np.ndarray, spec: SurrogateSpec, group_size: int) -> Surrogate:
    tr = task_rewards(raw, spec)
    b = tr.shape[1]
    if b % group_size:
        raise ValueError(f"batch of {b} is not a whole number of groups of {group_size}")
    tasks, aggregation = spec.objective.tasks, spec.objective.aggregation
    groups = tr.reshape(len(tasks), b // group_size, group_size)  # (m, groups, M)
    values = np.array([[task_value(groups[i, g], t) for i, t in enumerate(tasks)] for g in range(groups.shape[1])])
    obj = np.array([aggregation_value(v, aggregation) for v in values])
    if spec.objective_type == "linear":
        rewards = linear_reward_weights(spec.objective) @ tr
    else:
        rewards = grouped_first_variation(tr, group_size, tasks, aggregation)
    return Surrogate(rewards, tr, values, obj)
