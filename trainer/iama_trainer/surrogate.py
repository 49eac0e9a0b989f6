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
from iama.variations import group_task_values, grouped_first_variation


@dataclass(frozen=True)
class SurrogateSpec:
    """Everything that turns raw rewards into the trained reward; travels from the config to
    TRL's hook (``grpo.py``) as one object."""

    rewards: RewardSet  # column order of the raw rewards, and their normalisation statistics
    objective: Objective
    objective_type: ObjectiveType = "iama"
    normalize: bool = True  # train on standardised rewards (else raw: the statistics only go to iama.json)


@dataclass(frozen=True)
class Surrogate:
    rewards: np.ndarray  # (B,) what GRPO turns into advantages
    task_rewards: np.ndarray  # (m, B) r_i per sample (normalised if the run normalises)
    group_values: np.ndarray  # (groups, m) R_i on each group's empirical distribution
    objective: float  # g(mean_x R_1, …, mean_x R_m): the batch's estimate of the objective (Eq. 1)


def task_rewards(raw: np.ndarray, spec: SurrogateSpec) -> np.ndarray:
    """(m, B): task i's reward ``r_i = Σ_k w_ik·normalize(reward_k)`` for every sample."""
    names = spec.rewards.names
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != len(names):
        raise ValueError(f"raw rewards must be (batch, {len(names)}), got {raw.shape}")
    if not np.all(np.isfinite(raw)):
        raise ValueError("raw rewards must be finite")
    columns = {name: raw[:, k] for k, name in enumerate(names)}
    stats = spec.rewards.stats if spec.normalize else None
    return np.stack([weighted_score(columns, task.weights, stats) for task in spec.objective.tasks])


def compute_surrogate(raw: np.ndarray, spec: SurrogateSpec, group_size: int) -> Surrogate:
    tr = task_rewards(raw, spec)
    b = tr.shape[1]
    if b % group_size:
        raise ValueError(f"batch of {b} is not a whole number of groups of {group_size}")
    tasks, aggregation = spec.objective.tasks, spec.objective.aggregation
    values = group_task_values(tr, group_size, tasks)  # (groups, m)
    objective = aggregation_value(values.mean(axis=0), aggregation)
    if spec.objective_type == "linear":
        rewards = linear_reward_weights(spec.objective) @ tr
    else:
        rewards = grouped_first_variation(tr, group_size, tasks, aggregation)
    return Surrogate(rewards, tr, values, objective)


def expected_advantages(surrogate: np.ndarray, group_size: int, scale_rewards: str) -> np.ndarray:
    """(B,) the advantages TRL 1.16 must derive from the gathered surrogate (its
    ``sum_then_normalize`` path): minus the group mean, divided by the group's (or the batch's)
    Bessel-corrected std + 1e-4 unless ``scale_rewards`` is ``none``. The trainer compares this
    with what TRL computed at its first step (``grpo.py``)."""
    r = np.asarray(surrogate, dtype=np.float64).reshape(-1, group_size)
    adv = r - r.mean(axis=1, keepdims=True)
    if scale_rewards == "group":
        adv = adv / (r.std(axis=1, ddof=1, keepdims=True) + 1e-4)
    elif scale_rewards == "batch":
        adv = adv / (r.std(ddof=1) + 1e-4)
    return adv.reshape(-1)
