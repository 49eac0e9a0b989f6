"""Input checks shared by the pure math modules.

Every public function of the core takes rewards for *one group* (a finite support) and,
optionally, probabilities on that support. Centralising the checks keeps the error messages
identical wherever a caller (trainer, server, eval) hands in bad data.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


def as_rewards(rewards: ArrayLike, *, name: str = "rewards") -> FloatArray:
    """A non-empty, finite, 1-D float64 copy of ``rewards``."""
    arr = np.asarray(rewards, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (no NaN/inf)")
    return arr


def as_probs(probs: ArrayLike | None, size: int) -> FloatArray:
    """Probabilities on a support of ``size`` points; uniform (empirical) when ``None``.

    Probabilities are renormalised so that callers may pass unnormalised weights, but they
    must be finite, non-negative and not all zero.
    """
    if probs is None:
        return np.full(size, 1.0 / size)
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (size,):
        raise ValueError(f"probs must have shape ({size},), got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probs must be finite and non-negative")
    total = p.sum()
    if total <= 0:
        raise ValueError("probs must not all be zero")
    return p / total


def check_n(n: float) -> float:
    """Best-of-N budget; real N >= 1 is allowed since the BoN formulas are analytic in N."""
    if not np.isfinite(n) or n < 1:
        raise ValueError(f"N must be a finite number >= 1, got {n}")
    return float(n)


def check_tau(tau: float) -> float:
    if not np.isfinite(tau) or tau <= 0:
        raise ValueError(f"temperature tau must be finite and > 0, got {tau}")
    return float(tau)
