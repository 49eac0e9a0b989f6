"""Per-prompt task values under BoN / soft BoN, and g by budget (pure: no I/O, no torch).

Raw scores go in, (prompts, M) per reward: M samples of each prompt. What comes out is what a
request with budget N would get: the probability that the algorithm picks each of the M
samples, in expectation over which N of them it drew (:func:`selection_probs`: exact for BoN,
Monte Carlo for soft BoN), and from it each task's value per prompt. ``iama eval``
(:mod:`iama_eval.evaluate`), ``iama sweep`` and the KL path all select through
:func:`selection_probs`, so the three agree on what "BoN_N of this model" means.
"""

from __future__ import annotations

import numpy as np

from iama._arrays import FloatArray
from iama.algorithms import bon_selection_weights, soft_bon_subset_weights
from iama.objective import Aggregation, Algorithm, Task, aggregation_value
from iama.rewards import weighted_score


def selection_probs(score: FloatArray, algorithm: Algorithm, n: int, tau: float, seed: int) -> FloatArray:
    """(P, M) → (P, M): ``P(sample j of prompt i is selected)`` by ``algorithm`` with budget N.

    BoN is exact over the C(M, N) subsets (:func:`iama.algorithms.bon_selection_weights`); soft
    BoN with temperature ``tau`` is Monte Carlo over subsets, seeded ``seed + i`` for prompt i
    so that a prompt's estimate does not depend on the others. N = 1 gives ``1/M`` each.
    """
    return np.stack(
        [
            bon_selection_weights(s, n) if algorithm == "bon" else soft_bon_subset_weights(s, n, tau, rng=seed + i)
            for i, s in enumerate(score)
        ]
    )


def per_prompt_task_values(raw: dict[str, FloatArray], tasks: list[Task], budgets: list[int], seed: int) -> FloatArray:
    """(tasks, budgets, prompts): each task's reward of the completion its algorithm picks among
    N of a prompt's M samples, in expectation over which N (exact for BoN, Monte Carlo for
    soft BoN); N = 1 is the policy's own mean. ``raw``: reward name → (prompts, M), raw units."""
    prompts = next(iter(raw.values())).shape[0]
    out = np.zeros((len(tasks), len(budgets), prompts))
    for i, task in enumerate(tasks):
        r = weighted_score(raw, task.weights)  # (prompts, M): raw rewards, the sweep's units
        for b, n in enumerate(budgets):
            sel = selection_probs(r, task.algorithm, n, task.tau, seed)  # (prompts, M)
            out[i, b] = [float(np.dot(w, x)) for w, x in zip(sel, r, strict=True)]
    return out


def g_by_budget(values: FloatArray, agg: Aggregation) -> FloatArray:
    """(..., tasks, budgets) task means → (..., budgets): g with every task at budget N."""
    flat = values.reshape(-1, values.shape[-2], values.shape[-1])
    g = np.array([[aggregation_value(v[:, b], agg) for b in range(v.shape[1])] for v in flat])
    return g.reshape(*values.shape[:-2], values.shape[-1])
