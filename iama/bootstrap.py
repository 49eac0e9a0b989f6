"""Bootstrap intervals clustered by prompt (pure).

A prompt's samples are correlated (they share the prompt, and often candidates), so an
interval that resamples single samples is too narrow. Resampling whole prompts is the
honest unit for every benchmark that reports a mean over prompts × repeats. The two-way
(seeds × prompts) interval of the trained-model sweeps is :func:`iama_eval.sweep.bootstrap`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


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
