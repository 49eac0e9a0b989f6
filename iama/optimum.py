"""Exact optima of the KL-regularised objective on a scalar marginal: what training should reach.

When every task's reward depends on a completion only through one scalar ``x`` (its length, the
number it answers), the maximiser of ``g(R_1[π], …, R_m[π]) − β·KL[π‖π_ref]`` keeps π_ref's
distribution *within* each value of ``x`` (any reweighting inside a level set costs KL and gains
nothing), so the problem reduces to the marginal ``p`` of ``x`` on the base's support, and the
sequence-level KL equals ``KL(p‖p₀)``. This module solves that finite problem:

- IAMA (non-linear): mirror descent ``log p ← (1 − ηβ)·log p + ηβ·log p₀ + η·δg/δp``, the
  first variation being the core's (:func:`iama.variations.objective_first_variation`); its fixed
  point is ``p ∝ p₀·exp(δg/δp / β)``, and with ``β = 0`` it is the unregularised optimum
  (the paper's Prop. 3.1 on a uniform marginal; ``tests/test_optimum.py``).
- Linear GRPO: the closed form ``p ∝ p₀·exp(Σ_i w_i r_i / β)``.
- :func:`beta_for_kl` finds the β that reaches a given KL, so both can be compared at matched KL.

All pure numpy: the probe (``iama probe``) calls it on the base model's measured marginal, and
training results are compared against it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from iama._arrays import FloatArray
from iama.algorithms import bon_value, soft_bon_value
from iama.objective import Aggregation, Task, aggregation_value
from iama.variations import objective_first_variation

__all__ = [
    "Marginal",
    "Optimum",
    "beta_for_kl",
    "iama_optimum",
    "kl_divergence",
    "linear_optimum",
    "marginal_kl",
    "task_values",
]


@dataclass(frozen=True)
class Marginal:
    """A distribution on finitely many scalar values; NaN is one value ("no number")."""

    values: FloatArray  # (K,) distinct, sorted, NaN last if present
    probs: FloatArray  # (K,) > 0, sums to 1

    @classmethod
    def from_samples(cls, samples: ArrayLike) -> Marginal:
        """The empirical distribution of ``samples`` (e.g. the base model's lengths)."""
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        if x.size == 0:
            raise ValueError("need at least one sample")
        finite = x[np.isfinite(x)]
        values, counts = np.unique(finite, return_counts=True)
        missing = int(np.sum(np.isnan(x)))
        if missing:
            values, counts = np.append(values, np.nan), np.append(counts, missing)
        return cls(values, counts / counts.sum())


def kl_divergence(p: ArrayLike, q: ArrayLike) -> float:
    """``KL(p‖q) = Σ p log(p/q)`` over the support of p (q > 0 wherever p > 0)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    mask = p > 0
    return float(np.sum(p[mask] * (np.log(p[mask]) - np.log(q[mask]))))


def marginal_kl(samples: ArrayLike, reference: ArrayLike, alpha: float = 0.5) -> float:
    """``KL(p̂‖q̂)`` between the scalar's distributions in ``samples`` (a policy's) and in
    ``reference`` (the base's): the part of a policy's sequence KL that this module sees.

    By the chain rule, ``KL(π‖π_ref) = KL(p‖p₀) + E_{x~p} KL(π(·|x)‖π_ref(·|x))``: the marginal
    of the scalar x, plus how far the text moved *within* each value, which the optima here
    keep at zero. Each distribution is the samples' counts on the union of both supports (NaN,
    "no value", is one value) with ``alpha`` added to every count (Jeffreys' 1/2 by default), so
    a value that one side never showed costs a finite amount. A plug-in estimate: biased upwards
    with few samples (two halves of one distribution's samples give a floor to read it against).
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    y = np.asarray(reference, dtype=np.float64).reshape(-1)
    if x.size == 0 or y.size == 0:
        raise ValueError("need samples on both sides")
    nan = -np.inf  # NaN as a value of its own: np.unique needs it comparable
    xs, ys = np.where(np.isnan(x), nan, x), np.where(np.isnan(y), nan, y)
    support = np.union1d(xs, ys)
    p = np.array([np.sum(xs == v) for v in support], dtype=np.float64) + alpha
    q = np.array([np.sum(ys == v) for v in support], dtype=np.float64) + alpha
    return kl_divergence(p / p.sum(), q / q.sum())


def task_values(task_rewards: ArrayLike, tasks: Sequence[Task], probs: ArrayLike, n: float | None = None) -> FloatArray:
    """(m,) ``R_i[p]`` under each task's algorithm; ``n`` overrides every BoN task's budget."""
    tr = np.asarray(task_rewards, dtype=np.float64)
    out = []
    for r, task in zip(tr, tasks, strict=True):
        if task.algorithm == "bon":
            out.append(bon_value(r, task.n if n is None else n, probs))
        else:
            out.append(soft_bon_value(r, task.tau, probs))
    return np.array(out)


@dataclass(frozen=True)
class Optimum:
    probs: FloatArray  # (K,) the optimal marginal on the base's support
    beta: float
    kl: float  # KL(p‖p₀): the sequence-level KL of the optimal policy
    g: float  # g(R_1, …, R_m) under the tasks' own algorithms
    objective: float  # g − β·KL
    iterations: int
    converged: bool


def _finish(
    p: FloatArray,
    base: Marginal,
    tr: FloatArray,
    tasks: Sequence[Task],
    agg: Aggregation,
    beta: float,
    iterations: int,
    converged: bool,
) -> Optimum:
    kl = kl_divergence(p, base.probs)
    g = aggregation_value(task_values(tr, tasks, p), agg)
    return Optimum(p, beta, kl, g, g - beta * kl, iterations, converged)


def iama_optimum(
    base: Marginal,
    task_rewards: ArrayLike,
    tasks: Sequence[Task],
    aggregation: Aggregation,
    beta: float,
    eta: float | None = None,
    max_steps: int = 20000,
    tol: float = 1e-10,
) -> Optimum:
    """The maximiser of ``g(R[p]) − β·KL(p‖p₀)`` by mirror descent from ``p₀``.

    ``task_rewards`` is (m, K): task i's reward at each support value. ``eta`` defaults to
    ``min(1, 1/β)/scale`` with ``scale`` the largest reward gap, so that ``ηβ ≤ 1`` (the step
    stays a convex combination with ``p₀`` in log space) and a step moves log-probabilities by
    at most about 1. Stops when the largest change of ``log p`` falls below ``tol``.

    The hard ``min`` of two tasks is solved through its tie instead (:func:`_min_of_two`): its
    gradient switches sides there, and mirror descent with a fixed step cycles around it (on the
    number task β = 0.1 went through KL 0.79–1.03 for all 20,000 steps, ``converged: false``).
    """
    if beta < 0 or not math.isfinite(beta):
        raise ValueError(f"beta must be finite and >= 0, got {beta}")
    tr = np.asarray(task_rewards, dtype=np.float64)
    if tr.shape != (len(tasks), base.values.size):
        raise ValueError(f"task_rewards must be (tasks={len(tasks)}, support={base.values.size}), got {tr.shape}")
    active = np.flatnonzero(aggregation.resolved_weights(len(tasks)) > 0)
    if aggregation.kind == "min" and active.size == 2:
        return _min_of_two(base, tr, tasks, aggregation, beta, (int(active[0]), int(active[1])), eta, max_steps, tol)
    spread = float(np.ptp(tr, axis=1).max()) or 1.0
    step = eta if eta is not None else min(1.0, 1.0 / beta if beta > 0 else 1.0) / spread
    log_p0 = np.log(base.probs)
    log_p = log_p0.copy()
    for it in range(1, max_steps + 1):
        p = np.exp(log_p)
        grad = objective_first_variation(list(tr), tasks, aggregation, probs=p)
        new = (1.0 - step * beta) * log_p + step * beta * log_p0 + step * grad
        new -= new.max()
        new -= math.log(np.exp(new).sum())
        change = float(np.max(np.abs(new - log_p)))
        log_p = new
        if change < tol:
            return _finish(np.exp(log_p), base, tr, tasks, aggregation, beta, it, True)
    return _finish(np.exp(log_p), base, tr, tasks, aggregation, beta, max_steps, False)


def _min_of_two(
    base: Marginal,
    tr: FloatArray,
    tasks: Sequence[Task],
    aggregation: Aggregation,
    beta: float,
    pair: tuple[int, int],
    eta: float | None,
    max_steps: int,
    tol: float,
    iterations: int = 50,
) -> Optimum:
    """``max_p min(R_a, R_b) − β·KL`` through the weighted problems it is made of.

    At the optimum either one task binds (it is below the other at the optimum of that task
    alone) or the two tie, at the optimum of ``λ·R_a + (1 − λ)·R_b − β·KL`` for the λ where
    ``R_a = R_b`` (the stationarity conditions of the min). Each weighted problem is smooth, so
    mirror descent converges on it; λ is found by bisection on ``R_a − R_b``, which rises
    with λ. Exact up to the weighted solver's tolerance when that solver finds each weighted
    optimum (as everywhere here: BoN values are not concave, so it is a stationary point).
    """
    a, b = pair
    m = len(tasks)
    steps = 0

    def weighted(lam: float) -> tuple[Optimum, FloatArray]:
        nonlocal steps
        w = [0.0] * m
        w[a], w[b] = lam, 1.0 - lam
        o = iama_optimum(base, tr, tasks, Aggregation(kind="weighted", weights=w), beta, eta, max_steps, tol)
        steps += o.iterations
        return o, task_values(tr, tasks, o.probs)

    def done(o: Optimum) -> Optimum:
        return _finish(o.probs, base, tr, tasks, aggregation, beta, steps, o.converged)

    for lam, mine, other in ((1.0, a, b), (0.0, b, a)):
        o, r = weighted(lam)
        if r[mine] <= r[other]:  # this task binds even when it alone is optimised
            return done(o)
    lo, hi = 0.0, 1.0  # R_a − R_b < 0 at lo, > 0 at hi
    for _ in range(iterations):
        mid = (lo + hi) / 2
        o, r = weighted(mid)
        if abs(r[a] - r[b]) <= 1e-10:
            break
        lo, hi = (mid, hi) if r[a] < r[b] else (lo, mid)
    return done(o)


def linear_optimum(
    base: Marginal,
    task_rewards: ArrayLike,
    weights: ArrayLike,
    tasks: Sequence[Task],
    aggregation: Aggregation,
    beta: float,
) -> Optimum:
    """Standard GRPO's optimum ``p ∝ p₀·exp(Σ_i w_i r_i / β)`` (closed form); ``g`` is still
    reported under the tasks' algorithms, which is how a user of its BoN would score it."""
    tr = np.asarray(task_rewards, dtype=np.float64)
    r = np.asarray(weights, dtype=np.float64) @ tr  # (K,)
    if beta <= 0:  # the limit: all mass on the best value(s)
        best = r == r.max()
        p = np.where(best, base.probs, 0.0)
        return _finish(p / p.sum(), base, tr, tasks, aggregation, beta, 0, True)
    logits = np.log(base.probs) + r / beta
    p = np.exp(logits - logits.max())
    return _finish(p / p.sum(), base, tr, tasks, aggregation, beta, 0, True)


def beta_for_kl(
    solve: Callable[[float], Optimum], kl: float, lo: float = 1e-4, hi: float = 1e3, iterations: int = 40
) -> Optimum:
    """The optimum whose KL is ``kl``, by bisection on log β (KL falls as β grows).

    ``solve(beta)`` is e.g. ``lambda b: iama_optimum(base, tr, tasks, agg, b)``. If even ``lo``
    gives less KL than asked, ``kl`` is beyond what the base's support allows (the optimum at
    β → 0 is reached first) and that optimum is returned.
    """
    if kl <= 0:
        raise ValueError(f"kl must be > 0, got {kl}")
    at_lo = solve(lo)
    if at_lo.kl <= kl:
        return at_lo
    a, b = math.log(lo), math.log(hi)
    best = at_lo
    for _ in range(iterations):
        mid = solve(math.exp((a + b) / 2))
        best = mid
        if abs(mid.kl - kl) <= 1e-4 * kl:
            break
        if mid.kl > kl:
            a = (a + b) / 2
        else:
            b = (a + b) / 2
    return best
