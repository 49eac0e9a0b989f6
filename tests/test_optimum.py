"""The optimum predictor (iama.optimum) against closed forms and its own optimality conditions."""

import numpy as np
import pytest

from iama.objective import Aggregation, Task
from iama.optimum import Marginal, beta_for_kl, iama_optimum, kl_divergence, linear_optimum, task_values
from iama.variations import objective_first_variation

pytestmark = pytest.mark.inprocess

K = 100
EDGES = np.arange(K + 1) / K
Y = (EDGES[:-1] + EDGES[1:]) / 2
UNIFORM = Marginal(Y, np.full(K, 1 / K))
TR = np.stack([1 - Y**2, 1 - (1 - Y) ** 2])  # Prop. 3.1: r1 = 1 − y², r2 = 1 − (1 − y)²
AGG = Aggregation(kind="weighted", weights=[0.5, 0.5])


@pytest.mark.parametrize("n", [2, 4])
def test_predictor_reproduces_prop_3_1_on_a_uniform_marginal(n):
    """β = 0, BoN_N for both users: the optimal CDF is y^a / (y^a + (1 − y)^a), a = 1/(N − 1)."""
    tasks = [Task(algorithm="bon", n=n)] * 2
    opt = iama_optimum(UNIFORM, TR, tasks, AGG, beta=0.0, max_steps=30000)
    a = 1.0 / (n - 1)
    closed = EDGES[1:] ** a / (EDGES[1:] ** a + (1 - EDGES[1:]) ** a)
    err = np.abs(np.cumsum(opt.probs) - closed)
    assert err.max() < 0.01
    interior = (EDGES[1:] > 0.1) & (EDGES[1:] < 0.9)
    assert err[interior].max() < 0.004
    closed_p = np.diff(EDGES**a / (EDGES**a + (1 - EDGES) ** a))
    g_closed = 0.5 * sum(task_values(TR, tasks, closed_p))
    assert opt.g == pytest.approx(g_closed, abs=1e-5)


def test_regularised_optimum_is_the_fixed_point_p_proportional_to_p0_exp_variation_over_beta():
    tasks = [Task(algorithm="bon", n=4)] * 2
    rng = np.random.default_rng(0)
    base = Marginal(Y, rng.dirichlet(np.full(K, 3.0)))
    opt = iama_optimum(base, TR, tasks, AGG, beta=0.05)
    assert opt.converged
    grad = objective_first_variation(list(TR), tasks, AGG, probs=opt.probs)
    logits = np.log(base.probs) + grad / 0.05
    fixed = np.exp(logits - logits.max())
    assert opt.probs == pytest.approx(fixed / fixed.sum(), abs=1e-8)
    assert opt.kl == pytest.approx(kl_divergence(opt.probs, base.probs))
    # and it beats nearby distributions on the regularised objective
    for _ in range(5):
        q = opt.probs * np.exp(0.05 * rng.normal(size=K))
        q /= q.sum()
        jq = 0.5 * sum(task_values(TR, tasks, q)) - 0.05 * kl_divergence(q, base.probs)
        assert jq <= opt.objective + 1e-12


@pytest.mark.parametrize("beta", [0.02, 0.1])  # at 0.5 the low user binds alone (the test below)
def test_the_hard_min_of_two_users_is_solved_at_their_tie(beta):
    """g = min: the gradient switches sides at the tie between the users, so mirror descent with
    a fixed step cycles around it (as it did on the number task's marginal); solved through the
    tie, the optimum is where the users are equal and no nearby distribution does better."""
    tasks = [Task(algorithm="bon", n=4)] * 2
    rng = np.random.default_rng(0)
    skewed = rng.dirichlet(np.full(K, 3.0)) * np.exp(-3 * Y)  # the users start unequal
    base = Marginal(Y, skewed / skewed.sum())
    agg = Aggregation(kind="min")
    opt = iama_optimum(base, TR, tasks, agg, beta=beta)
    assert opt.converged
    r = task_values(TR, tasks, opt.probs)
    assert r[0] == pytest.approx(r[1], abs=1e-6) and opt.g == pytest.approx(min(r))
    for _ in range(20):
        q = opt.probs * np.exp(0.02 * rng.normal(size=K))
        q /= q.sum()
        jq = min(task_values(TR, tasks, q)) - beta * kl_divergence(q, base.probs)
        assert jq <= opt.objective + 1e-9


def test_a_min_whose_worse_user_binds_alone_is_that_users_own_optimum():
    tasks = [Task(algorithm="bon", n=4)] * 2
    far = np.stack([TR[0] - 1.0, TR[1]])  # user 0 is worse whatever the distribution
    opt = iama_optimum(UNIFORM, far, tasks, Aggregation(kind="min"), beta=0.1)
    alone = iama_optimum(UNIFORM, far, tasks, Aggregation(kind="weighted", weights=[1.0, 0.0]), beta=0.1)
    assert opt.probs == pytest.approx(alone.probs) and opt.g == pytest.approx(task_values(far, tasks, opt.probs)[0])


def test_linear_optimum_is_the_gibbs_tilt_and_iama_wins_at_matched_kl():
    tasks = [Task(algorithm="bon", n=4)] * 2
    lin = linear_optimum(UNIFORM, TR, [0.5, 0.5], tasks, AGG, beta=0.1)
    tilt = np.exp((0.5 * TR[0] + 0.5 * TR[1]) / 0.1)
    assert lin.probs == pytest.approx(tilt / tilt.sum())
    # at the same KL the meta-aligned optimum is polarised (mass at both ends) and scores higher
    kl = 0.2
    iama = beta_for_kl(lambda b: iama_optimum(UNIFORM, TR, tasks, AGG, b), kl)
    linear = beta_for_kl(lambda b: linear_optimum(UNIFORM, TR, [0.5, 0.5], tasks, AGG, b), kl)
    assert iama.kl == pytest.approx(kl, rel=1e-3) and linear.kl == pytest.approx(kl, rel=1e-3)
    assert iama.g > linear.g + 0.01
    ends = (Y < 0.2) | (Y > 0.8)
    assert iama.probs[ends].sum() > 0.5 > linear.probs[ends].sum()


def test_marginal_from_samples_keeps_missing_values_as_one_atom():
    m = Marginal.from_samples([3.0, 1.0, np.nan, 3.0, np.nan])
    assert m.values[:2].tolist() == [1.0, 3.0] and np.isnan(m.values[2])
    assert m.probs.tolist() == pytest.approx([0.2, 0.4, 0.4])


def test_predictor_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="task_rewards must be"):
        iama_optimum(UNIFORM, TR[:, :5], [Task(), Task()], AGG, 0.1)
    with pytest.raises(ValueError, match="beta"):
        iama_optimum(UNIFORM, TR, [Task(), Task()], AGG, -1.0)


def test_marginal_kl_is_zero_on_equal_samples_and_the_exact_kl_on_large_ones():
    from iama.optimum import marginal_kl

    x = [1.0, 2.0, 2.0, np.nan]
    assert marginal_kl(x, x) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(0)
    p, q = np.array([0.7, 0.2, 0.1]), np.array([0.2, 0.3, 0.5])
    a, b = rng.choice(3, 200_000, p=p), rng.choice(3, 200_000, p=q)
    assert marginal_kl(a, b) == pytest.approx(kl_divergence(p, q), rel=0.02)
    # a value the reference never showed costs a finite amount, and more the more often it is seen
    assert 0 < marginal_kl([5.0] * 4, [1.0] * 4) < marginal_kl([5.0] * 40, [1.0] * 40) < np.inf
    with pytest.raises(ValueError):
        marginal_kl([], [1.0])


def test_kl_split_puts_a_policy_that_moved_only_the_scalar_all_in_the_marginal_part():
    """A point whose samples shift the scalar and whose log-ratios equal exactly that marginal
    KL has nothing left over; one whose log-ratios are larger has the excess as the rest."""
    from iama.optimum import marginal_kl
    from iama_eval.kl_split import kl_split

    base = [[1.0, 2.0] * 4] * 4  # 4 prompts × 8 samples
    moved = [[2.0] * 6 + [1.0] * 2] * 4
    marginal = marginal_kl(np.ravel(moved), np.ravel(base))
    point = {"method": "iama", "seed": 0, "step": 3, "scalar": moved}
    points = {
        "base@0": {"method": "base", "seed": None, "step": 0, "scalar": base, "log_ratio": [[0.0] * 8] * 4},
        "a@3": {**point, "log_ratio": [[marginal] * 8] * 4},
        "b@3": {**point, "seed": 1, "log_ratio": [[marginal + 1.0] * 8] * 4},
    }
    split = kl_split(points)
    a, b = split["points"]
    assert a["kl_rest"] == pytest.approx(0.0, abs=1e-12) and a["marginal_share"] == pytest.approx(1.0)
    assert b["kl_rest"] == pytest.approx(1.0) and b["kl_marginal"] == pytest.approx(marginal)
    (mean,) = split["by_step"]
    assert mean["seeds"] == 2 and mean["kl_rest"] == pytest.approx(0.5)
    assert split["floor"] == pytest.approx(0.0, abs=1e-12)  # the base's two halves are alike


def test_histogram_bins_cover_the_bulk_and_the_targets_and_count_the_rest_apart():
    from iama_eval.distributions import outside, pooled_bins

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0, 30, 95), [1858.0, 2024.0, 1999.0], [np.nan, np.nan]])
    bins = pooled_bins({"base": x}, targets=[10.0, 90.0])
    assert bins[0] <= 0 and 90 < bins[-1] < 200  # both targets in view, the years not
    below, above, none = outside(x, bins)
    assert (below, above, none) == (0.0, pytest.approx(0.03), pytest.approx(0.02))
