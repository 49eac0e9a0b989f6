"""First variations of the IAMA objective on a group of samples.

Non-linear GRPO replaces each sample's reward by the first variation (functional derivative)
``δJ/δπ(y)`` of the objective ``J[π] = g(R_1[π], …, R_m[π])`` at the empirical distribution
of its group (or at any distribution on the group's support, via ``probs``). A first
variation is defined up to an additive constant; GRPO's group normalisation removes it.

Correctness is pinned by the tests: each function equals the finite-difference derivative of
the exact value in :mod:`iama.algorithms` along ``(1−ε)π + ε·δ_y``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from iama._arrays import FloatArray, as_probs, as_rewards, check_n, check_tau
from iama.algorithms import bon_value, soft_bon_value
from iama.objective import Aggregation, Task, aggregation_gradient

__all__ = [
    "bon_first_variation",
    "group_task_values",
    "grouped_first_variation",
    "objective_first_variation",
    "soft_bon_first_variation",
    "task_first_variation",
    "task_value",
]


def bon_first_variation(rewards: ArrayLike, n: float, probs: ArrayLike | None = None) -> FloatArray:
    """BoN_N first variation: ``r̃_(i) = −Σ_{k=i}^{M−1} N·C_k^{N−1}·(r_(k+1) − r_(k))``.

    ``C_k`` is the CDF after the k-th smallest reward (``k/M`` for the empirical distribution).
    The best sample gets 0. O(M log M) through one sort and a reversed cumulative sum; valid for
    any real N >= 1, including N > M. Tied rewards get equal values because their gap is 0.
    """
    n = check_n(n)
    r = as_rewards(rewards)
    p = as_probs(probs, r.size)
    order = np.argsort(r, kind="stable")
    rs = r[order]
    cdf = np.minimum(np.cumsum(p[order]), 1.0)
    terms = n * cdf[:-1] ** (n - 1.0) * np.diff(rs)  # k = 1..M-1
    tail = np.zeros(r.size)
    tail[:-1] = np.cumsum(terms[::-1])[::-1]  # Σ_{k>=i}
    out = np.empty(r.size)
    out[order] = -tail
    return out


def soft_bon_first_variation(rewards: ArrayLike, tau: float, probs: ArrayLike | None = None) -> FloatArray:
    """Soft BoN first variation ``e^{r/τ}(r − r̄)/Z`` with ``Z = E_π e^{r/τ}``, ``r̄ = E_T[r]``.

    The max reward is subtracted inside the exponent; the ratio ``e^{r/τ}/Z`` is unchanged, so
    very peaked groups (r/τ in the thousands) stay finite.
    """
    tau = check_tau(tau)
    r = as_rewards(rewards)
    p = as_probs(probs, r.size)
    e = np.exp((r - r.max()) / tau)
    z = float(np.dot(p, e))
    r_bar = float(np.dot(p, e * r)) / z
    return e * (r - r_bar) / z


def task_value(rewards: ArrayLike, task: Task, probs: ArrayLike | None = None) -> float:
    """``R_i[π] = E_{y~T_i[π]} r_i(y)`` for one task on a finite support."""
    if task.algorithm == "bon":
        return bon_value(rewards, task.n, probs)
    return soft_bon_value(rewards, task.tau, probs)


def task_first_variation(rewards: ArrayLike, task: Task, probs: ArrayLike | None = None) -> FloatArray:
    if task.algorithm == "bon":
        return bon_first_variation(rewards, task.n, probs)
    return soft_bon_first_variation(rewards, task.tau, probs)


def objective_first_variation(
    task_rewards: Sequence[ArrayLike],
    tasks: Sequence[Task],
    aggregation: Aggregation,
    probs: ArrayLike | None = None,
) -> FloatArray:
    """Chain rule: ``r̃ = Σ_i ∂g/∂R_i · r̃^{(i)}`` with ``R_i`` evaluated on the same support.

    ``task_rewards[i]`` holds task i's scalar reward ``r_i(y)`` for every support point.
    """
    if len(task_rewards) != len(tasks) or not tasks:
        raise ValueError(f"need one reward vector per task: {len(task_rewards)} vs {len(tasks)} tasks")
    values = np.array([task_value(r, t, probs) for r, t in zip(task_rewards, tasks, strict=True)])
    grad = aggregation_gradient(values, aggregation)
    out = np.zeros(as_rewards(task_rewards[0]).size)
    for gi, r, t in zip(grad, task_rewards, tasks, strict=True):
        if gi != 0.0:
            out += gi * task_first_variation(r, t, probs)
    return out


def grouped_first_variation(
    task_rewards: ArrayLike,
    group_size: int,
    tasks: Sequence[Task],
    aggregation: Aggregation,
) -> FloatArray:
    """Per-sample first variation of ``g(E_x R_1(x), …, E_x R_m(x))`` for a batch of prompts x.

    ``task_rewards`` has shape ``(num_tasks, batch)``, the batch being consecutive groups of
    ``group_size`` completions of one prompt each (TRL's layout after gathering across
    processes). The objective (the paper's Eq. 1) aggregates the tasks' values *averaged over
    prompts*, so the chain rule weights every group's task variations by the same
    ``∂g/∂R_i`` taken at the batch means ``R̄_i = mean_x R_i(x)``:
    ``r̃(x, y) = Σ_i ∂g/∂R_i(R̄) · r̃^{(i)}_x(y)``. For a weighted sum this equals the per-group
    chain rule; for ``min`` / ``smooth_min`` it differs (a task that is worst on one prompt but
    fine on average is not the one to push).
    """
    tr = np.asarray(task_rewards, dtype=np.float64)
    if tr.ndim != 2 or tr.shape[0] != len(tasks):
        raise ValueError(f"task_rewards must have shape (num_tasks={len(tasks)}, batch), got {tr.shape}")
    if group_size < 1 or tr.shape[1] % group_size != 0:
        raise ValueError(f"batch of {tr.shape[1]} is not a whole number of groups of {group_size}")
    groups = tr.reshape(len(tasks), -1, group_size)  # (m, groups, M)
    values = group_task_values(tr, group_size, tasks)  # (groups, m)
    grad = aggregation_gradient(values.mean(axis=0), aggregation)  # ∂g/∂R_i at the batch means
    out = np.zeros(tr.shape[1])
    for i, (gi, task) in enumerate(zip(grad, tasks, strict=True)):
        if gi != 0.0:
            out += gi * np.concatenate([task_first_variation(groups[i, g], task) for g in range(groups.shape[1])])
    return out


def group_task_values(task_rewards: ArrayLike, group_size: int, tasks: Sequence[Task]) -> FloatArray:
    """(groups, m): ``R_i`` on each group's empirical distribution."""
    tr = np.asarray(task_rewards, dtype=np.float64)
    groups = tr.reshape(len(tasks), -1, group_size)
    return np.array([[task_value(groups[i, g], t) for i, t in enumerate(tasks)] for g in range(groups.shape[1])])
