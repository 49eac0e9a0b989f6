"""Per-reward normalisation statistics.

Rewards live on different scales (VADER in [-1, 1], length penalties near 0). Weights given by a
user only mean something once every reward is standardised by statistics measured on the
*base model's* samples; the trainer records them in iama.json and the server reuses them.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field, field_validator

from iama._arrays import FloatArray

MIN_STD = 1e-6


class RewardStats(BaseModel):
    """Mean/std of one reward over ``count`` samples; identity when nothing was measured."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mean: float = 0.0
    std: float = Field(default=1.0, gt=0.0)
    count: int = Field(default=0, ge=0)

    @field_validator("mean", "std")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v


def fit_stats(samples: ArrayLike) -> RewardStats:
    """Statistics of observed rewards; a constant reward gets ``std = 1`` (nothing to rescale)."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError("need a non-empty set of finite reward samples")
    std = float(x.std())
    return RewardStats(mean=float(x.mean()), std=std if std > MIN_STD else 1.0, count=int(x.size))


DEGENERATE_SHARE = 0.9


def degenerate_warning(name: str, samples: ArrayLike, normalized: bool) -> str | None:
    """A warning when one value holds ``DEGENERATE_SHARE`` of a reward's base samples.

    Such a reward (e.g. a length reward with 92 % of samples at the cap) has a small but
    non-zero std, so z-scoring it multiplies its rare differences by a large factor and lets it
    dominate the weighted sum (and the units of the task weights and τ with it). A reward that
    never varies gets ``std = 1`` (:func:`fit_stats`) and is not inflated, so it is not flagged.
    """
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return None
    share = float(np.max(np.unique(x, return_counts=True)[1]) / x.size)
    std = float(x.std())
    if share < DEGENERATE_SHARE or std <= MIN_STD:
        return None
    effect = (
        f"z-scoring divides its differences by {std:.3g}, inflating them"
        if normalized
        else "its gradient signal comes from the few other samples"
    )
    return (
        f"reward {name!r}: {share:.0%} of base samples share one value (std {std:.3g}): {effect}; "
        "pick targets the base spans (iama probe)" + (" or set normalization.enabled: false" if normalized else "")
    )


def normalize(scores: ArrayLike, stats: RewardStats | None) -> FloatArray:
    x = np.asarray(scores, dtype=np.float64)
    if stats is None:
        return x.copy()
    return (x - stats.mean) / stats.std
