"""First variations: finite differences of exact values, properties, and the chain rule."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iama.algorithms import bon_value, soft_bon_value
from iama.objective import Aggregation, Task, aggregation_gradient, aggregation_value
from iama.variations import (
    bon_first_variation,
    grouped_first_variation,
    objective_first_variation,
    soft_bon_first_variation,
    task_value,
)

pytestmark = pytest.mark.inprocess

EPS = 1e-6


def directional(value_fn, p, j):
    """d/dε value((1−ε)p + ε δ_j) at ε=0, central difference."""

    def at(e):
        q = (1 - e) * p
        q[j] += e
        return value_fn(q)

    return (at(EPS) - at(-EPS)) / (2 * EPS)


@pytest.mark.parametrize("n", [1, 2, 4, 7.5, 32])  # includes N > M
@pytest.mark.parametrize("weighted", [False, True])
def test_bon_variation_is_derivative_of_exact_value(n, weighted):
    rng = np.random.default_rng(int(n * 10) + weighted)
    r = np.round(rng.normal(size=8), 1)  # rounding creates ties
    p = rng.dirichlet(np.ones(8)) if weighted else np.full(8, 1 / 8)
    g = bon_first_variation(r, n, p if weighted else None)
    for j in range(8):
        fd = directional(lambda q: bon_value(r, n, q), p.copy(), j)
        assert fd == pytest.approx(g[j] - p @ g, abs=1e-5)


def test_bon_variation_formula_on_a_small_group():
    r = np.array([3.0, 1.0, 2.0])
    n, m = 4, 3
    # sorted 1,2,3: r̃_(3)=0; r̃_(2)=−N(2/3)^3·1; r̃_(1)=r̃_(2)−N(1/3)^3·1
    r2 = -n * (2 / m) ** (n - 1)
    r1 = r2 - n * (1 / m) ** (n - 1)
    assert bon_first_variation(r, n) == pytest.approx([0.0, r1, r2])
    assert bon_first_variation(r, 1) == pytest.approx(r - r.max())  # N=1: linear GRPO


@pytest.mark.parametrize("tau", [0.05, 0.5, 3.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_soft_bon_variation_is_derivative_of_exact_value(tau, weighted):
    rng = np.random.default_rng(7)
    r = rng.normal(size=6)
    p = rng.dirichlet(np.ones(6)) if weighted else np.full(6, 1 / 6)
    g = soft_bon_first_variation(r, tau, p if weighted else None)
    for j in range(6):
        fd = directional(lambda q: soft_bon_value(r, tau, q), p.copy(), j)
        assert fd == pytest.approx(g[j] - p @ g, abs=1e-5 * max(1, np.abs(g).max()))


def test_soft_bon_is_stable_for_extreme_scales():
    g = soft_bon_first_variation([1000.0, 999.0, -1000.0], 0.01)
    assert np.all(np.isfinite(g))
    assert g[0] == pytest.approx(0.0, abs=1e-12)  # T is a point mass on the best: r̄ = r_best


rewards = st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=12).map(np.array)


@settings(max_examples=150, deadline=None)
@given(r=rewards, c=st.floats(-50, 50), n=st.floats(1, 64))
def test_bon_shift_invariance(r, c, n):
    assert bon_first_variation(r + c, n) == pytest.approx(bon_first_variation(r, n), abs=1e-6)


@settings(max_examples=150, deadline=None)
@given(r=rewards, c=st.floats(-50, 50), tau=st.floats(0.1, 10))
def test_soft_bon_shift_invariance(r, c, tau):
    assert soft_bon_first_variation(r + c, tau) == pytest.approx(soft_bon_first_variation(r, tau), abs=1e-6)


@settings(max_examples=150, deadline=None)
@given(r=rewards, n=st.floats(1, 64))
def test_bon_monotone_and_best_is_zero(r, n):
    g = bon_first_variation(r, n)
    order = np.argsort(r, kind="stable")
    assert np.all(np.diff(g[order]) >= -1e-9)
    assert g[np.argmax(r)] == 0.0
    assert np.all(g <= 0)
    # tied rewards get identical values
    for v in np.unique(r):
        assert np.ptp(g[r == v]) == 0.0


@settings(max_examples=150, deadline=None)
@given(r=rewards, tau=st.floats(0.1, 10))
def test_soft_bon_monotone_above_mean_minus_tau(r, tau):
    # f(r) = e^{r/τ}(r − r̄)/Z has derivative ∝ (r − r̄)/τ + 1: increasing only for r ≥ r̄ − τ.
    g = soft_bon_first_variation(r, tau)
    r_bar = soft_bon_value(r, tau)
    keep = r >= r_bar - tau
    order = np.argsort(r[keep], kind="stable")
    assert np.all(np.diff(g[keep][order]) >= -1e-9)


@pytest.mark.parametrize(
    "agg",
    [
        Aggregation(kind="weighted", weights=[0.3, 0.7]),
        Aggregation(kind="min"),
        Aggregation(kind="smooth_min", gamma=0.2, weights=[1.0, 2.0]),
    ],
)
def test_chain_rule_matches_finite_difference(agg):
    rng = np.random.default_rng(3)
    r1, r2 = rng.normal(size=6), rng.normal(size=6) + 0.3
    p = rng.dirichlet(np.ones(6))
    tasks = [Task(algorithm="bon", n=3), Task(algorithm="soft_bon", tau=0.5)]

    def j_of(q):
        return aggregation_value([task_value(r1, tasks[0], q), task_value(r2, tasks[1], q)], agg)

    g = objective_first_variation([r1, r2], tasks, agg, p)
    for j in range(6):
        assert directional(j_of, p.copy(), j) == pytest.approx(g[j] - p @ g, abs=1e-5)


def test_aggregations():
    v = np.array([0.2, 0.5])
    assert aggregation_value(v, Aggregation(kind="min")) == 0.2
    assert aggregation_gradient(v, Aggregation(kind="min")) == pytest.approx([1, 0])
    assert aggregation_gradient([0.2, 0.2], Aggregation(kind="min")) == pytest.approx([0.5, 0.5])
    sm = Aggregation(kind="smooth_min", gamma=1e-4)
    assert aggregation_value(v, sm) == pytest.approx(0.2, abs=1e-3)
    big = Aggregation(kind="smooth_min", gamma=1e4)
    assert aggregation_value(v, big) == pytest.approx(0.35, abs=1e-4)
    sm1 = Aggregation(kind="smooth_min", gamma=0.3)
    fd = [(aggregation_value(v + e, sm1) - aggregation_value(v - e, sm1)) / 2e-6 for e in np.eye(2) * 1e-6]
    assert aggregation_gradient(v, sm1) == pytest.approx(fd, abs=1e-6)
    with pytest.raises(ValueError):
        Aggregation(weights=[-1.0, 1.0])
    with pytest.raises(ValueError):
        Aggregation(weights=[0.0, 0.0])


def test_grouped_variation_uses_each_group_alone():
    tasks = [Task(algorithm="bon", n=4)]
    agg = Aggregation()
    batch = np.array([[1.0, 2.0, 3.0, 10.0, 20.0, 30.0]])
    out = grouped_first_variation(batch, 3, tasks, agg)
    assert out[:3] == pytest.approx(bon_first_variation([1, 2, 3], 4))
    assert out[3:] == pytest.approx(bon_first_variation([10, 20, 30], 4))
    with pytest.raises(ValueError, match="whole number of groups"):
        grouped_first_variation(batch, 4, tasks, agg)


def test_min_aggregates_the_batch_mean_of_each_task_not_each_group():
    """Eq. 1: g(E_x R_1(x), E_x R_2(x)). Prompt A is bad at task 1, prompt B at task 2, but on
    average task 1 is the worse one: every group must push task 1, B's included."""
    from iama.objective import Aggregation, Task
    from iama.variations import bon_first_variation, grouped_first_variation

    tasks = [Task(weights={"a": 1}, algorithm="bon", n=2), Task(weights={"b": 1}, algorithm="bon", n=2)]
    agg = Aggregation(kind="min")
    r1 = np.array([0.0, 0.1, 0.2, 0.3, 2.0, 2.1, 2.2, 2.3])  # task 1: A low, B high
    r2 = np.array([3.0, 3.1, 3.2, 3.3, 1.0, 1.1, 1.2, 1.3])  # task 2: A high, B lowish
    out = grouped_first_variation(np.stack([r1, r2]), 4, tasks, agg)
    # batch means: R1 ≈ 1.2 < R2 ≈ 2.2, so ∂g/∂R = (1, 0) for both prompts
    assert out[:4] == pytest.approx(bon_first_variation(r1[:4], 2))
    assert out[4:] == pytest.approx(bon_first_variation(r1[4:], 2))  # per group, B would have pushed task 2

    # and it is the derivative of the batch objective: perturb prompt B's distribution towards sample j
    def batch_objective(probs_b):
        from iama.objective import aggregation_value
        from iama.variations import task_value

        values = [
            [task_value(r1[:4], tasks[0]), task_value(r2[:4], tasks[1])],
            [task_value(r1[4:], tasks[0], probs_b), task_value(r2[4:], tasks[1], probs_b)],
        ]
        return aggregation_value(np.mean(values, axis=0), agg)

    uniform, eps = np.full(4, 0.25), 1e-6
    for j in range(4):
        moved = (1 - eps) * uniform + eps * np.eye(4)[j]
        fd = (batch_objective(moved) - batch_objective(uniform)) / eps
        # d/dε J((1−ε)π + εδ_j) = (1/#prompts)·(r̃(j) − E_π r̃): a first variation up to its constant
        assert fd == pytest.approx(0.5 * (out[4 + j] - np.dot(uniform, out[4:])), abs=1e-4)
