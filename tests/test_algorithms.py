"""Exact values of BoN / soft BoN on finite supports, checked against brute-force enumeration."""

import functools
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iama.algorithms import (
    best_of_n_select,
    bon_kl_bound,
    bon_probabilities,
    bon_unbiased_estimate,
    bon_value,
    select,
    selection_kl_bound,
    soft_best_of_n_probabilities,
    soft_best_of_n_select,
    soft_bon_kl,
    soft_bon_value,
)

pytestmark = pytest.mark.inprocess


def brute_bon(r, p, n):
    """Law of the max of n i.i.d. draws, ties split evenly by index-independent mass."""
    value, probs = 0.0, np.zeros(len(r))
    for idx in itertools.product(range(len(r)), repeat=n):
        w = np.prod([p[i] for i in idx])
        best = max(r[i] for i in idx)
        value += w * best
        winners = [i for i in set(idx) if r[i] == best]
        # the max's law on a tied block is split in proportion to p (same as bon_probabilities)
        tot = sum(p[i] for i in winners)
        for i in winners:
            probs[i] += w * p[i] / tot
    return value, probs


@pytest.mark.parametrize("n", [1, 2, 3])
def test_bon_value_and_law_match_enumeration(n):
    rng = np.random.default_rng(n)
    r = np.array([0.3, -1.0, 0.3, 2.0, 0.0])  # with a tie
    p = rng.dirichlet(np.ones(r.size))
    v, probs = brute_bon(r, p, n)
    assert bon_value(r, n, p) == pytest.approx(v, abs=1e-12)
    law = bon_probabilities(r, n, p)
    # tied points' individual shares are a convention; their block total is not.
    assert law[[1, 4, 3]] == pytest.approx(probs[[1, 4, 3]], abs=1e-12)
    assert law[0] + law[2] == pytest.approx(probs[0] + probs[2], abs=1e-12)
    assert law.sum() == pytest.approx(1.0)
    assert np.dot(law, r) == pytest.approx(v, abs=1e-12)


def test_bon_value_n1_is_mean_and_large_n_is_max():
    r = np.array([1.0, 5.0, -2.0])
    assert bon_value(r, 1) == pytest.approx(r.mean())
    assert bon_value(r, 10_000) == pytest.approx(5.0, abs=1e-6)


def test_unbiased_estimate_matches_subset_enumeration():
    r = np.array([0.1, 0.5, -0.3, 0.9, 0.9, 0.2])
    for n in (1, 2, 4, 6):
        subsets = list(itertools.combinations(r, n))
        assert bon_unbiased_estimate(r, n) == pytest.approx(np.mean([max(s) for s in subsets]))
    with pytest.raises(ValueError):
        bon_unbiased_estimate(r, 7)


def test_selection_rules():
    assert best_of_n_select([0.1, 0.7, 0.7, -1]) == 1  # ties → lowest index
    assert best_of_n_select([float("nan"), -5.0]) == 1
    with pytest.raises(ValueError):
        best_of_n_select([float("nan")])
    probs = soft_best_of_n_probabilities([0.0, math.log(3.0)], 1.0)
    assert probs == pytest.approx([0.25, 0.75])
    # huge scores do not overflow
    assert soft_best_of_n_probabilities([1e6, 1e6 - 1], 0.01)[0] == pytest.approx(1.0)
    picks = [soft_best_of_n_select([0.0, math.log(3.0)], 1.0, rng=s) for s in range(4000)]
    assert np.mean(picks) == pytest.approx(0.75, abs=0.03)
    assert soft_best_of_n_select([1, 2, 3], 0.5, rng=7) == soft_best_of_n_select([1, 2, 3], 0.5, rng=7)
    with pytest.raises(ValueError):
        soft_best_of_n_select([1, 2], 0.0)


def test_select_returns_k_indices_chosen_first():
    scores = [0.2, 0.9, 0.9, -1.0, 0.5]
    assert select(scores, "bon", k=3) == [1, 2, 4]  # ties: the lower index first
    assert select(scores, "bon", k=99) == [1, 2, 4, 0, 3]
    assert select(scores, "bon") == [best_of_n_select(scores)]
    picks = select(scores, "soft_bon", k=5, tau=0.3, rng=1)
    assert sorted(picks) == list(range(5))  # without replacement
    assert picks == select(scores, "soft_bon", k=5, tau=0.3, rng=1)  # seeded
    # only two candidates have non-zero probability at a tiny τ: the rest are filled by score
    assert select([5.0, 5.0, 0.0, 1.0], "soft_bon", k=4, tau=1e-4, rng=0)[2:] == [3, 2]
    # NaN scores are never drawn while a real score is left
    assert select([float("nan"), 0.0, float("nan")], "soft_bon", k=1, tau=1.0, rng=3) == [1]
    firsts = [select([0.0, math.log(3.0)], "soft_bon", k=1, tau=1.0, rng=s)[0] for s in range(4000)]
    assert np.mean(firsts) == pytest.approx(0.75, abs=0.03)
    with pytest.raises(ValueError, match="algorithm"):
        select(scores, "beam")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be"):
        select(scores, "bon", k=0)


def test_selection_in_tiers_never_prefers_a_worse_tier_and_is_select_with_one_tier():
    from iama.algorithms import select_in_tiers

    scores = [0.9, 0.1, 0.8, 0.5]
    tiers = [2, 0, 1, 0]  # e.g. 2: not valid JSON, 1: cut at max_tokens, 0: both fine
    assert select_in_tiers(scores, tiers, "bon") == [3]  # the best of tier 0, not the best score
    assert select_in_tiers(scores, tiers, "bon", k=4) == [3, 1, 2, 0]  # then tier by tier
    for seed in range(50):  # soft BoN draws within the tier only
        assert select_in_tiers(scores, tiers, "soft_bon", k=2, tau=0.05, rng=seed)[0] in (1, 3)
    for seed in range(20):
        assert select_in_tiers(scores, [0] * 4, "soft_bon", k=3, tau=0.3, rng=seed) == select(
            scores, "soft_bon", k=3, tau=0.3, rng=seed
        )
    nan = float("nan")  # unscored candidates come last, in index order, when k asks for them
    assert select_in_tiers([nan, 1.0, nan], [0, 0, 0], "bon", k=3) == [1, 0, 2]
    with pytest.raises(ValueError, match="one per candidate"):
        select_in_tiers(scores, [0, 1], "bon")


def test_kl_bound_and_soft_kl():
    assert bon_kl_bound(1) == 0.0
    assert bon_kl_bound(4) == pytest.approx(math.log(4) - 0.75)
    assert selection_kl_bound("soft_bon", 8) == pytest.approx(math.log(8))
    # BoN on a fine discretisation of a continuous reward approaches the bound from below
    r = np.linspace(0, 1, 20_000)
    law = bon_probabilities(r, 4)
    p = np.full(r.size, 1 / r.size)
    kl = float(np.sum(law * np.log(law / p)))
    assert kl == pytest.approx(bon_kl_bound(4), abs=1e-3)
    # soft BoN KL: exact formula vs direct computation
    rr, pp = np.array([0.0, 1.0, 3.0]), np.array([0.5, 0.3, 0.2])
    t = pp * np.exp(rr / 0.7)
    t /= t.sum()
    assert soft_bon_kl(rr, 0.7, pp) == pytest.approx(np.sum(t * np.log(t / pp)))
    assert soft_bon_value(rr, 0.7, pp) == pytest.approx(np.dot(t, rr))


def test_bad_inputs():
    with pytest.raises(ValueError, match="finite"):
        bon_value([1.0, float("nan")], 2)
    with pytest.raises(ValueError, match="N must"):
        bon_value([1.0], 0.5)
    with pytest.raises(ValueError, match="probs"):
        bon_value([1.0, 2.0], 2, [1.0, -1.0])
    with pytest.raises(ValueError, match="empty"):
        soft_bon_value([], 1.0)


def test_selection_weights_match_subset_enumeration():
    from iama.algorithms import bon_selection_weights, soft_best_of_n_probabilities, soft_bon_subset_weights

    s = np.array([0.2, 0.9, 0.2, -1.0, 0.5])
    r = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # another reward, read off the selected sample
    for n in (1, 2, 3, 5):
        subsets = list(itertools.combinations(range(5), n))
        expect = np.mean([r[min(sub, key=lambda j: (-s[j], j))] for sub in subsets])  # argmax, lowest index
        assert np.dot(bon_selection_weights(s, n), r) == pytest.approx(expect)
        soft = np.mean([np.dot(soft_best_of_n_probabilities(s[list(sub)], 0.3), r[list(sub)]) for sub in subsets])
        assert np.dot(soft_bon_subset_weights(s, n, 0.3, subsets=4000, rng=1), r) == pytest.approx(soft, abs=0.03)
    assert bon_selection_weights(s, 1) == pytest.approx(np.full(5, 0.2))


def test_pareto_hypervolume_and_saving():
    from iama.pareto import compute_saving, hypervolume_2d, pareto_front

    pts = np.array([[1, 0], [0, 1], [0.5, 0.5], [0.4, 0.4], [0.2, 0.9]])
    front = pareto_front(pts)
    assert front.tolist() == [[0, 1], [0.2, 0.9], [0.5, 0.5], [1, 0]]
    # staircase area above ref (0, 0): 1·0 + 0.5·0.5 + 0.2·(0.9−0.5) + 0·(1−0.9)
    assert hypervolume_2d(pts, [0, 0]) == pytest.approx(0.5 * 0.5 + 0.2 * 0.4)
    assert hypervolume_2d(pts, [-1, -1]) == pytest.approx(2 * 1 + 1.5 * (1.5 - 1) + 1.2 * (1.9 - 1.5) + 1 * (2 - 1.9))
    assert hypervolume_2d([[0.5, 0.5]], [1, 1]) == 0.0
    assert compute_saving({1: 0.1, 2: 0.4, 4: 0.6, 16: 0.7}, 0.55) == 4
    assert compute_saving({1: 0.1, 2: 0.2}, 0.55) is None


def test_early_rejection_keeps_the_best_running_fraction():
    from iama.algorithms import early_rejection_keep

    scores = [0.9, 0.1, 0.5, float("nan"), 0.7, 0.2]
    running = [True, True, True, True, True, False]  # candidate 5 already finished
    assert early_rejection_keep(scores, running, 0.5) == [0, 2, 4]  # ceil(0.5 · 5) = 3 of the 5 running
    assert early_rejection_keep(scores, running, 1.0) == [0, 1, 2, 3, 4]
    assert early_rejection_keep(scores, running, 0.01) == [0]  # never fewer than one
    assert early_rejection_keep([0.2, 0.2, 0.1], [True] * 3, 0.5) == [0, 1]  # ties: the lower index
    assert early_rejection_keep([1.0, 2.0], [False, False], 0.5) == []
    with pytest.raises(ValueError, match="keep"):
        early_rejection_keep([1.0], [True], 0.0)


def test_budget_waves_double_up_to_the_max():
    from iama.algorithms import budget_waves

    assert budget_waves(16) == [2, 4, 8, 16]
    assert budget_waves(12) == [2, 4, 8, 12]
    assert budget_waves(1) == [1]
    assert budget_waves(8, first=3) == [3, 6, 8]


def _replayed_tokens(lengths: list[int], scores: list[list[float]], checkpoints: list[int], keep: float) -> int:
    """The server's early rejection (searches.early_rejection) on known lengths and scores."""
    from iama.algorithms import early_rejection_keep

    rejected: dict[int, int] = {}
    for k, cp in enumerate(checkpoints):
        running = [j for j, n in enumerate(lengths) if n > cp and j not in rejected]
        if len(running) <= 1:
            break
        kept = early_rejection_keep([scores[k][j] for j in running], [True] * len(running), keep)
        rejected |= {j: cp for i, j in enumerate(running) if i not in kept}
    return sum(rejected.get(j, n) for j, n in enumerate(lengths))


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 40),
    st.lists(st.integers(1, 63), min_size=1, max_size=4, unique=True).map(sorted),
    st.floats(0.05, 1.0),
    st.integers(1, 64),
    st.randoms(use_true_random=False),
)
def test_the_token_bound_holds_for_every_run(n, checkpoints, keep, max_tokens, rnd):
    from iama.algorithms import early_rejection_token_bound

    lengths = [rnd.randint(1, max_tokens) for _ in range(n)]
    scores = [[rnd.random() for _ in range(n)] for _ in checkpoints]
    bound = early_rejection_token_bound(n, checkpoints, keep, max_tokens)
    assert _replayed_tokens(lengths, scores, checkpoints, keep) <= bound
    # reached when every candidate runs to the cap (checkpoints past the cap prune nothing)
    assert _replayed_tokens([max_tokens] * n, scores, checkpoints, keep) == bound


def test_oversampling_starts_the_most_candidates_plain_bons_tokens_allow():
    from iama.algorithms import early_rejection_token_bound, oversampled_budget

    assert oversampled_budget(4, [2], 0.25, 16, 256) == 11  # 11·2 + 3·14 = 64 = 4·16; 12 would need 66
    assert early_rejection_token_bound(12, [2], 0.25, 16) > 64
    assert oversampled_budget(16, [32], 0.25, 256, 256) == 44
    assert oversampled_budget(16, [32], 0.25, 256, 20) == 20  # the limit
    assert oversampled_budget(16, [], 0.5, 256, 256) == 16  # nothing pruned: nothing to spend
    assert oversampled_budget(16, [300], 0.5, 256, 256) == 16  # a checkpoint past the cap prunes nothing
    assert oversampled_budget(1, [8], 0.5, 16, 256) == 1  # one candidate is never pruned
    for n in range(1, 20):
        for cps in ([4], [2, 8], [1, 3, 9]):
            n0 = oversampled_budget(n, cps, 0.5, 16, 10**4)
            bound = functools.partial(early_rejection_token_bound, checkpoints=cps, keep=0.5, max_tokens=16)
            assert bound(n0) <= n * 16 < bound(n0 + 1)
