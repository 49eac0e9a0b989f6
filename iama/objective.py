"""The IAMA objective's pieces: tasks (inference-time algorithm per reward) and aggregation g.

``J[π] = g(R_1[π], …, R_m[π]) − β·KL[π‖π_ref]``. These are small immutable value types plus
the pure functions for g and its gradient; the trainer config, the model card and the server
all build on them, so a task means the same thing everywhere.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from iama._arrays import FloatArray

Algorithm = Literal["bon", "soft_bon"]
"""Inference-time algorithm T: best-of-N or soft best-of-N (the wire and configs spell it so)."""
AggregationKind = Literal["weighted", "min", "smooth_min"]
ObjectiveType = Literal["iama", "linear"]
"""``iama``: non-linear GRPO on first variations; ``linear``: standard GRPO on weighted rewards."""


class Task(BaseModel):
    """Task i: reward ``r_i = Σ_k weights[k]·reward_k`` under inference-time algorithm ``T_i``.

    ``n`` is the BoN budget the model is meta-aligned for; ``tau`` the soft-BoN temperature.
    Soft BoN's value is the tilt ``∝ exp(r/tau)·pi``, the limit of many candidates, so training
    does not read its ``n``: there ``n`` is the candidates drawn at serve time, the budget
    evaluation reports compare at.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: dict[str, float] = Field(default_factory=dict)
    algorithm: Algorithm = "bon"
    n: float = Field(default=1.0, ge=1.0)
    tau: float = Field(default=1.0, gt=0.0)
    name: str | None = None

    @field_validator("weights")
    @classmethod
    def _finite_weights(cls, v: dict[str, float]) -> dict[str, float]:
        for k, w in v.items():
            if not math.isfinite(w):
                raise ValueError(f"weight for {k!r} must be finite")
        return v


class Aggregation(BaseModel):
    """g over task values: weighted sum, hard min, or smooth-min ``−γ·log Σ w_i e^{−R_i/γ}``.

    Smooth-min uses normalised weights so that γ→0 gives the min and γ→∞ the weighted mean.
    ``weights`` defaults to uniform (all ones for the weighted sum).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: AggregationKind = "weighted"
    weights: list[float] | None = None
    gamma: float = Field(default=0.1, gt=0.0)

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            if not v:
                raise ValueError("aggregation weights must not be empty")
            if any((not math.isfinite(w)) or w < 0 for w in v):
                raise ValueError("aggregation weights must be finite and >= 0")
            if sum(v) <= 0:
                raise ValueError("aggregation weights must not all be zero")
        return v

    def resolved_weights(self, m: int) -> FloatArray:
        if self.weights is None:
            return np.ones(m)
        if len(self.weights) != m:
            raise ValueError(f"aggregation has {len(self.weights)} weights for {m} tasks")
        return np.asarray(self.weights, dtype=np.float64)


class Objective(BaseModel):
    """Tasks plus aggregation; ``objective: linear`` trains standard GRPO on the same rewards."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: list[Task]
    aggregation: Aggregation = Aggregation()

    @model_validator(mode="after")
    def _consistent(self) -> Objective:
        if not self.tasks:
            raise ValueError("at least one task is required")
        self.aggregation.resolved_weights(len(self.tasks))
        return self


def aggregation_value(values: ArrayLike, agg: Aggregation) -> float:
    """g(R_1, …, R_m): ``Σ w_i R_i``, ``min_{w_i>0} R_i`` or ``−γ·log Σ_i ŵ_i e^{−R_i/γ}``.

    Smooth-min uses the normalised weights ``ŵ = w/Σw`` and a log-sum-exp shift: with
    ``z_i = −R_i/γ`` and ``z* = max z_i``, ``log Σ ŵ_i e^{z_i} = z* + log Σ ŵ_i e^{z_i − z*}``,
    so tasks far below the others (large ``R/γ`` gaps) never overflow.
    """
    r = np.asarray(values, dtype=np.float64)
    w = agg.resolved_weights(r.size)
    if agg.kind == "weighted":
        return float(np.dot(w, r))
    if agg.kind == "min":
        return float(r[w > 0].min())
    wn = w / w.sum()
    z = -r / agg.gamma
    mask = wn > 0
    zmax = z[mask].max()  # the log-sum-exp shift
    return float(-agg.gamma * (zmax + math.log(np.sum(wn[mask] * np.exp(z[mask] - zmax)))))


def aggregation_gradient(values: ArrayLike, agg: Aggregation) -> FloatArray:
    """∂g/∂R_i: ``w_i`` for the weighted sum; for smooth-min the softmax
    ``ŵ_i e^{−R_i/γ} / Σ_j ŵ_j e^{−R_j/γ}`` (weights on the log scale, max subtracted); for the
    hard min the subgradient that splits evenly among tied minima."""
    r = np.asarray(values, dtype=np.float64)
    w = agg.resolved_weights(r.size)
    if agg.kind == "weighted":
        return w.copy()
    if agg.kind == "min":
        active = w > 0
        lo = r[active].min()
        hit = active & (r == lo)
        return hit / hit.sum()
    wn = w / w.sum()
    logits = np.where(wn > 0, np.log(np.where(wn > 0, wn, 1.0)) - r / agg.gamma, -np.inf)
    logits -= logits.max()
    e = np.exp(logits)
    return e / e.sum()


def linear_reward_weights(objective: Objective) -> FloatArray:
    """Weights the linear baseline puts on each task's reward: the aggregation weights, or
    uniform ones for min/smooth-min (the baseline has no notion of the worst task)."""
    m = len(objective.tasks)
    w = objective.aggregation.resolved_weights(m)
    if objective.aggregation.kind == "weighted":
        return w
    return w / w.sum()


def linear_reward_mix(objective: Objective) -> dict[str, float]:
    """The one reward linear GRPO trains on, per raw reward: ``Σ_i w_i·(task i's weight on it)``.

    Two objectives with the same mix train the same linear model, whatever their algorithms or
    aggregation kind: a sweep of soft BoN or of min can share a weighted-sum sweep's linear runs."""
    mix: dict[str, float] = {}
    for w, task in zip(linear_reward_weights(objective), objective.tasks, strict=True):
        for name, v in task.weights.items():
            mix[name] = mix.get(name, 0.0) + float(w) * v
    return mix
