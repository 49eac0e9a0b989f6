"""Bootstrap intervals clustered by prompt (pure).

A prompt's samples are correlated (they share the prompt, and often candidates), so an
interval that resamples single samples is too narrow. Resampling whole prompts is the
honest unit for every benchmark that reports a mean over prompts × repeats
(:func:`clustered_mean_ci`). Trained models add a second source of variation, the training
seed: the sweeps resample seeds and prompts independently (:func:`seed_prompt_resamples`,
:func:`seeds_prompts_mean_ci`), and a nonlinear statistic (g of the task means) is computed
inside each draw, never on the draws' ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray

from iama._arrays import FloatArray

IntArray = NDArray[np.int64]


def clustered_mean_ci(
    values: ArrayLike, clusters: ArrayLike | None = None, draws: int = 4000, seed: int = 0
) -> list[float]:
    """95 % percentile interval of the mean of ``values``, resampling whole clusters.

    ``clusters`` labels each value's cluster (its prompt); ``None`` makes every value its own
    cluster (values that are already one per prompt). The mean of a draw is its values' sum
    over their count, so clusters of unequal size weigh by size, as the point mean does.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {v.shape}")
    if draws < 1:
        raise ValueError("draws must be >= 1")
    if clusters is None:
        sums, counts = v, np.ones_like(v)
    else:
        g = np.asarray(clusters)
        if g.shape != v.shape:
            raise ValueError(f"clusters must label every value: shape {g.shape} != {v.shape}")
        ids, inverse = np.unique(g, return_inverse=True)
        sums = np.bincount(inverse, weights=v, minlength=ids.size).astype(np.float64)
        counts = np.bincount(inverse, minlength=ids.size).astype(np.float64)
    pick = np.random.default_rng(seed).integers(0, sums.size, (draws, sums.size))
    means = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    return [float(x) for x in np.percentile(means, [2.5, 97.5])]


def seed_prompt_resamples(
    prompts: int, seeds: Mapping[str, int], draws: int, rng: np.random.Generator | int = 0
) -> Iterator[tuple[IntArray, dict[str, IntArray]]]:
    """Index draws of the two-way (prompts × seeds) bootstrap, one tuple per draw.

    Each draw picks ``prompts`` prompt indices uniformly with replacement, shared by every
    group (the groups, e.g. methods, were evaluated on the same held-out prompts), then for
    each group ``g`` of ``seeds`` independently ``seeds[g]`` seed indices with replacement:
    ``p_1..p_P ~ U{0..P−1}``, ``s^g_1..s^g_{S_g} ~ U{0..S_g−1}``. A caller computes its statistic
    on ``values[s^g][..., p]``, so anything nonlinear (g, interpolation) happens inside the draw.
    """
    if prompts < 1 or any(n < 1 for n in seeds.values()):
        raise ValueError(f"need at least one prompt and one seed per group, got {prompts} and {dict(seeds)}")
    if draws < 1:
        raise ValueError("draws must be >= 1")
    gen = np.random.default_rng(rng) if isinstance(rng, int) else rng
    for _ in range(draws):
        idx_prompts = gen.integers(0, prompts, size=prompts)
        yield idx_prompts, {g: gen.integers(0, n, size=n) for g, n in seeds.items()}


def seeds_prompts_mean_ci(
    values: ArrayLike,
    of_means: Callable[[FloatArray], float] | None = None,
    draws: int = 1000,
    rng: np.random.Generator | int = 0,
) -> tuple[FloatArray, FloatArray]:
    """Means over seeds and prompts, optionally a statistic of those means, with 95 % intervals.

    ``values`` is (seeds S, K, prompts P). The point estimate is ``m_k = (1/SP) Σ_s Σ_p v[s,k,p]``
    for each k, and ``of_means(m)`` appended when given (g of the task means, Eq. 1). Each
    bootstrap draw resamples seeds and prompts independently (:func:`seed_prompt_resamples`)
    and recomputes the same quantities, ``m^b_k = (1/SP) Σ_i Σ_j v[s_i,k,p_j]`` and
    ``of_means(m^b)``; the interval is the 2.5 and 97.5 percentiles over draws.

    Returns ``(point, ci)``: point (K [+1],), ci (K [+1], 2) as (low, high).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 3 or v.size == 0:
        raise ValueError(f"values must be a non-empty (seeds, K, prompts) array, got shape {v.shape}")

    def stats(x: FloatArray) -> FloatArray:
        means = x.mean(axis=(0, 2))  # (K,)
        return np.append(means, of_means(means)) if of_means is not None else means

    point = stats(v)
    samples = np.stack(
        [stats(v[s["all"]][:, :, p]) for p, s in seed_prompt_resamples(v.shape[2], {"all": v.shape[0]}, draws, rng)]
    )  # (draws, K [+1])
    lo, hi = np.percentile(samples, [2.5, 97.5], axis=0)
    return point, np.stack([lo, hi], axis=1)
