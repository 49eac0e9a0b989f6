"""The prompt-clustered bootstrap every benchmark's intervals come from, and the two-way
(seeds × prompts) one of the sweeps."""

from __future__ import annotations

import numpy as np
import pytest

from iama.bootstrap import clustered_mean_ci, seed_prompt_resamples, seeds_prompts_mean_ci

pytestmark = pytest.mark.inprocess


def test_a_constant_has_a_zero_width_interval():
    assert clustered_mean_ci([2.5] * 7, [0, 0, 1, 1, 2, 2, 2]) == pytest.approx([2.5, 2.5])


def test_repeats_of_one_prompt_count_as_one_cluster_not_as_independent_samples():
    rng = np.random.default_rng(0)
    per_prompt = rng.normal(size=20)
    repeated = np.repeat(per_prompt, 10)  # ten identical repeats of each prompt: no new information
    prompts = np.repeat(np.arange(20), 10)
    clustered = clustered_mean_ci(repeated, prompts)
    naive = clustered_mean_ci(repeated)  # every sample its own cluster: ~sqrt(10) too narrow
    assert clustered == pytest.approx(clustered_mean_ci(per_prompt), abs=1e-12)
    assert (clustered[1] - clustered[0]) > 2.5 * (naive[1] - naive[0])


def test_the_interval_covers_the_mean_and_unequal_clusters_weigh_by_size():
    values = np.array([0.0, 0.0, 0.0, 1.0])
    clusters = np.array(["a", "a", "a", "b"])
    lo, hi = clustered_mean_ci(values, clusters)
    assert lo <= values.mean() <= hi
    # two clusters: a draw is (a,a), (a,b), (b,a) or (b,b): means 0, 1/4, 1/4, 1
    assert lo == pytest.approx(0.0) and hi == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("values", "clusters", "message"),
    [([], None, "non-empty"), ([[1.0]], None, "1-D"), ([1.0, 2.0], [0], "label every value")],
)
def test_bad_input_is_named(values, clusters, message):
    with pytest.raises(ValueError, match=message):
        clustered_mean_ci(values, clusters)


def test_the_two_way_bootstrap_reports_the_means_and_g_of_the_means_not_the_mean_of_g():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 2, 40))  # (seeds, tasks, prompts)
    point, ci = seeds_prompts_mean_ci(values, lambda m: float(np.min(m)), draws=500, rng=1)
    means = values.mean(axis=(0, 2))
    assert point[:2].tolist() == means.tolist() and point[2] == means.min()
    assert ci.shape == (3, 2) and np.all(ci[:, 0] <= point) and np.all(point <= ci[:, 1])
    # one seed and one prompt: nothing to resample, a zero-width interval
    one, ci_one = seeds_prompts_mean_ci(values[:1, :, :1], draws=50)
    assert one.shape == (2,) and np.array_equal(ci_one[:, 0], ci_one[:, 1])


def test_resampled_prompts_are_shared_by_the_groups_and_seeds_drawn_per_group():
    draws = list(seed_prompt_resamples(5, {"iama": 3, "linear": 2}, draws=20, rng=0))
    assert len(draws) == 20
    for prompts, seeds in draws:
        assert prompts.shape == (5,) and prompts.max() < 5
        assert seeds["iama"].shape == (3,) and seeds["iama"].max() < 3 and seeds["linear"].max() < 2
    with pytest.raises(ValueError, match="one seed per group"):
        next(seed_prompt_resamples(5, {"iama": 0}, draws=1))
