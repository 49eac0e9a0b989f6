"""Validated weighted aggregation of several rewards into one scalar per completion."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
from numpy.typing import ArrayLike

from iama._arrays import FloatArray
from iama.rewards.normalization import RewardStats, normalize


class WeightError(ValueError):
    """Bad reward weights; ``field`` names the offending entry (e.g. ``reward_weights.foo``)."""

    def __init__(self, message: str, field: str = "reward_weights") -> None:
        super().__init__(message)
        self.field = field


def validate_weights(weights: Mapping[str, float], available: Iterable[str]) -> dict[str, float]:
    """Reject unknown names, NaN/inf/negative weights and all-zero weight vectors."""
    known = set(available)
    if not weights:
        raise WeightError("reward_weights must name at least one reward")
    out: dict[str, float] = {}
    for name, w in weights.items():
        field = f"reward_weights.{name}"
        if name not in known:
            raise WeightError(f"unknown reward {name!r}; available: {', '.join(sorted(known))}", field)
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise WeightError(f"weight for {name!r} must be a number", field) from None
        if not math.isfinite(w):
            raise WeightError(f"weight for {name!r} must be finite, got {w}", field)
        if w < 0:
            raise WeightError(f"weight for {name!r} must be >= 0, got {w}", field)
        out[name] = w
    if not any(w > 0 for w in out.values()):
        raise WeightError("reward_weights must not all be zero")
    return out


def normalize_scores(
    scores: Mapping[str, ArrayLike], stats: Mapping[str, RewardStats] | None = None
) -> dict[str, FloatArray]:
    """Each reward standardised with its statistics; rewards without statistics pass unchanged."""
    return {name: normalize(v, (stats or {}).get(name)) for name, v in scores.items()}


def weighted_sum(normalized: Mapping[str, ArrayLike], weights: Mapping[str, float]) -> FloatArray:
    """``Σ_k w_k · score_k`` over already-normalised scores; ``weights`` must be validated."""
    total: FloatArray | None = None
    for name, w in weights.items():
        if w == 0:
            continue
        part = w * np.asarray(normalized[name], dtype=np.float64)
        total = part if total is None else total + part
    if total is None:
        raise WeightError("reward_weights must not all be zero")
    return np.asarray(total, dtype=np.float64)


def weighted_score(
    scores: Mapping[str, ArrayLike],
    weights: Mapping[str, float],
    stats: Mapping[str, RewardStats] | None = None,
) -> FloatArray:
    """``Σ_k w_k · normalize(score_k)``: the one definition of a weighted score that the server,
    the trainer's task rewards and evaluation all use; ``weights`` must already be validated."""
    return weighted_sum(normalize_scores({k: scores[k] for k in weights}, stats), weights)
