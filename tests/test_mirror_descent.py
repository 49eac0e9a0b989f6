"""Exact mirror descent on a discretised [0, 1] reaches the paper's closed-form optimum.

Prop. 3.1 (β = 0, r1 = 1 − y², r2 = 1 − (1 − y)², g = ½R1 + ½R2 under BoN_N): the optimal policy
has CDF y^a / (y^a + (1 − y)^a) with a = 1/(N − 1). The first variations with exact
probabilities drive p ← p·exp(η·r̃); if the BoN variation were wrong, this would not converge there.
"""

import numpy as np
import pytest

from iama.algorithms import bon_value
from iama.objective import Aggregation, Task
from iama.variations import objective_first_variation

pytestmark = pytest.mark.inprocess


@pytest.mark.parametrize("n", [2, 4])
def test_mirror_descent_reaches_closed_form_optimum(n):
    k = 100
    edges = np.arange(k + 1) / k
    y = (edges[:-1] + edges[1:]) / 2
    r1, r2 = 1 - y**2, 1 - (1 - y) ** 2
    tasks = [Task(algorithm="bon", n=n), Task(algorithm="bon", n=n)]
    agg = Aggregation(kind="weighted", weights=[0.5, 0.5])
    p = np.random.default_rng(0).dirichlet(np.full(k, 5.0))  # start away from the answer
    p0 = p.copy()
    for _ in range(4000):
        g = objective_first_variation([r1, r2], tasks, agg, probs=p)
        p = p * np.exp(3.0 * (g - g.max()))
        p /= p.sum()

    a = 1.0 / (n - 1)
    closed = edges[1:] ** a / (edges[1:] ** a + (1 - edges[1:]) ** a)
    err = np.abs(np.cumsum(p) - closed)
    interior = (edges[1:] > 0.1) & (edges[1:] < 0.9)
    assert err.max() < 0.02
    assert err[interior].max() < 0.005

    def objective(q):
        return 0.5 * bon_value(r1, n, q) + 0.5 * bon_value(r2, n, q)

    p_closed = np.diff(edges**a / (edges**a + (1 - edges) ** a))
    assert objective(p) == pytest.approx(objective(p_closed), abs=1e-5)
    assert objective(p) > objective(p0)


def test_scaling_the_surrogate_by_its_std_optimises_something_else():
    """TRL's ``scale_rewards: group`` divides the surrogate by its std, not the KL penalty. On the
    Prop. 3.1 toy with β = 0.05 (exact mirror descent, ``benchmarks/reward_scaling.py``) the
    unscaled update reaches the higher J, and the scaled one ends below the unscaled g-vs-KL
    frontier: more KL for less g. This is why ``scale_rewards`` defaults to ``none``."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from reward_scaling import run

    from iama_trainer.config import SCALE_REWARDS_DEFAULT

    none, group = run(0.05, "none", steps=3000), run(0.05, "group", steps=3000)
    assert none["J"] > group["J"] + 0.01
    assert group["kl"] > 2 * none["kl"]
    cheaper = run(0.008, "none", steps=3000)  # the unscaled update at a KL no larger than group's
    assert cheaper["kl"] <= group["kl"] and cheaper["g"] > group["g"] + 0.005
    assert SCALE_REWARDS_DEFAULT == "none"
