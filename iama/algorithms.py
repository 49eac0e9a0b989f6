"""Inference-time alignment algorithms: best-of-N (BoN) and soft best-of-N.

Two kinds of function live here:

* *selection*, used by the server on the N candidates of one request (:func:`select`, with
  the one-pick shorthands :func:`best_of_n_select` and :func:`soft_best_of_n_select`);
* *analytic values* of the transformed policy ``T[pi]`` when ``pi`` is a distribution on a
  finite support (the empirical distribution of a group, or an exact discretisation), used by
  the trainer's first variations, by evaluation and by the tests.

BoN: ``T[pi](y) = N * C(r(y))^(N-1) * pi(y)`` with ``C`` the reward CDF under ``pi``; on a finite
support with ties this is the law of the best of N i.i.d. draws, ties sharing their mass.
Soft BoN: ``T[pi](y) ∝ exp(r(y)/tau) * pi(y)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from iama._arrays import FloatArray, as_probs, as_rewards, check_n, check_tau
from iama.objective import Algorithm

__all__ = [
    "best_of_n_select",
    "bon_kl_bound",
    "bon_probabilities",
    "bon_selection_weights",
    "bon_unbiased_estimate",
    "bon_value",
    "budget_waves",
    "early_rejection_keep",
    "early_rejection_token_bound",
    "oversampled_budget",
    "select",
    "selection_kl_bound",
    "soft_best_of_n_probabilities",
    "soft_best_of_n_select",
    "soft_bon_kl",
    "soft_bon_subset_weights",
    "soft_bon_value",
]


def _finite_scores(scores: ArrayLike) -> FloatArray:
    """Scores for selection; NaN means 'unscorable' and can never win over a real score."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError("scores must be a non-empty 1-D array")
    if np.all(np.isnan(arr)):
        raise ValueError("all scores are NaN")
    return np.where(np.isnan(arr), -np.inf, arr)


def select(
    scores: ArrayLike,
    algorithm: Algorithm,
    k: int = 1,
    tau: float = 1.0,
    rng: np.random.Generator | int | None = None,
) -> list[int]:
    """Indices of the ``k`` candidates a request returns, the chosen one first.

    BoN: the ``k`` highest scores; a stable sort keeps the lowest index first among ties, so
    replays are deterministic. Soft BoN: ``k`` draws without replacement, each ∝ exp(score/τ)
    among those left (seeded by ``rng``); when fewer than ``k`` candidates have non-zero
    probability (NaN scores, or τ tiny next to the score gaps) the rest are filled by score.
    """
    arr = _finite_scores(scores)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, arr.size)
    by_score = [int(i) for i in np.argsort(-arr, kind="stable")]
    if algorithm == "bon":
        return by_score[:k]
    if algorithm != "soft_bon":
        raise ValueError(f"unknown algorithm {algorithm!r}")
    probs = soft_best_of_n_probabilities(arr, tau)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    drawable = min(k, int(np.count_nonzero(probs)))
    picks = [int(i) for i in gen.choice(arr.size, size=drawable, replace=False, p=probs)]
    return picks + [i for i in by_score if i not in picks][: k - len(picks)]


def select_in_tiers(
    scores: ArrayLike,
    tiers: ArrayLike,
    algorithm: Algorithm,
    k: int = 1,
    tau: float = 1.0,
    rng: np.random.Generator | int | None = None,
) -> list[int]:
    """:func:`select` among the candidates of the best tier (the lowest number) first, then the
    next: the request's own rules come before the rewards. A candidate that breaks the format
    the request asked for, or was cut at ``max_tokens`` where finished ones are preferred, sits
    in a worse tier and is never chosen over one that does not, however it scores. A NaN score
    (a candidate stopped by early rejection) comes after every scored one. With one tier and no
    NaN this is :func:`select`, with the same draws.
    """
    arr = np.asarray(scores, dtype=np.float64)
    t = np.asarray(tiers, dtype=np.int64)
    if t.shape != arr.shape:
        raise ValueError(f"tiers must be one per candidate: {t.shape} vs {arr.shape}")
    if t.size:
        t = np.where(np.isnan(arr), t + t.max() + 1, t)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    picks: list[int] = []
    for tier in np.unique(t):
        need = min(k, arr.size) - len(picks)
        if need <= 0:
            break
        idx = np.flatnonzero(t == tier)
        if np.all(np.isnan(arr[idx])):  # nothing scored here: in index order
            picks += [int(i) for i in idx[:need]]
            continue
        picks += [int(idx[j]) for j in select(arr[idx], algorithm, min(need, idx.size), tau, gen)]
    return picks


def early_rejection_keep(partial_scores: ArrayLike, running: ArrayLike, keep: float) -> list[int]:
    """Indices of the *running* candidates to keep at a checkpoint of early rejection.

    Speculative rejection (Sun et al., 2024): score the candidates' partial texts and stop the
    weakest so their compute goes elsewhere. Of the candidates still running, the best
    ``ceil(keep · running)`` by partial score are kept (at least one; a NaN score ranks last,
    ties keep the lower index). Finished candidates cost nothing more and are never aborted.
    """
    scores = np.asarray(partial_scores, dtype=np.float64)
    alive = np.flatnonzero(np.asarray(running, dtype=bool))
    if scores.ndim != 1 or np.asarray(running).shape != scores.shape:
        raise ValueError("partial_scores and running must be 1-D arrays of the same length")
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if alive.size == 0:
        return []
    n_keep = max(1, math.ceil(keep * alive.size - 1e-9))
    ranked = sorted(alive, key=lambda i: (-scores[i] if np.isfinite(scores[i]) else np.inf, i))
    return sorted(int(i) for i in ranked[:n_keep])


def check_checkpoints(checkpoints: Sequence[int | float]) -> list[int | float]:
    """Early-rejection checkpoints of one kind (token counts, or fractions of ``max_tokens``),
    strictly increasing: the rule the request field and the server's default share."""
    v = list(checkpoints)
    if len({isinstance(x, float) for x in v}) > 1:
        raise ValueError("give checkpoints all as token counts or all as fractions of max_tokens")
    if any(b <= a for a, b in itertools.pairwise(v)):
        raise ValueError("checkpoints must increase strictly")
    return v


def checkpoints_in_tokens(checkpoints: Sequence[int | float], max_tokens: int) -> list[int]:
    """Checkpoints as token counts: a fraction f is ``⌈f · max_tokens⌉`` (at least 1), so one
    setting keeps its meaning at any length."""
    return [x if isinstance(x, int) else max(1, math.ceil(x * max_tokens)) for x in checkpoints]


def early_rejection_token_bound(n: int, checkpoints: Sequence[int], keep: float, max_tokens: int) -> int:
    """Most tokens early rejection can generate starting ``n`` candidates: every candidate runs
    to the next checkpoint, each checkpoint keeps ``ceil(keep · running)`` (the rule of
    :func:`early_rejection_keep`), and the survivors run to ``max_tokens``. A candidate that ends
    before a checkpoint costs less and leaves fewer to keep, so this bounds every run."""
    if n < 1 or max_tokens < 1 or not 0 < keep <= 1:
        raise ValueError("n and max_tokens must be >= 1 and keep in (0, 1]")
    total, running, done = 0, n, 0
    for cp in sorted(c for c in checkpoints if c < max_tokens):
        if running <= 1:
            break
        total += running * (cp - done)
        running, done = max(1, math.ceil(keep * running - 1e-9)), cp
    return total + running * (max_tokens - done)


def oversampled_budget(n: int, checkpoints: Sequence[int], keep: float, max_tokens: int, limit: int) -> int:
    """Over-sampling for early rejection: the most candidates (at most ``limit``) whose token
    bound (:func:`early_rejection_token_bound`) stays within plain BoN_n's ``n · max_tokens``.

    Pruning frees compute; spent on more starting candidates, the same tokens buy a wider
    search (Sun et al., 2024, start large and reject early). Never fewer than ``n``."""
    budget = n * max_tokens
    lo, hi = n, max(n, limit)
    while lo < hi:  # the bound grows with the start, so bisect the largest start that fits
        mid = (lo + hi + 1) // 2
        if early_rejection_token_bound(mid, checkpoints, keep, max_tokens) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def budget_waves(max_budget: int, first: int = 2) -> list[int]:
    """Cumulative candidate counts of an adaptive budget: ``first``, then doubling, up to
    ``max_budget`` (e.g. 2, 4, 8, 16). Each wave stops early when a candidate reaches the target."""
    if max_budget < 1 or first < 1:
        raise ValueError("max_budget and first must be >= 1")
    waves, n = [], min(first, max_budget)
    while n < max_budget:
        waves.append(n)
        n *= 2
    return [*waves, max_budget]


def best_of_n_select(scores: ArrayLike) -> int:
    """Index of the best candidate; ties go to the lowest index so replays are deterministic."""
    return select(scores, "bon")[0]


def soft_best_of_n_probabilities(scores: ArrayLike, tau: float) -> FloatArray:
    """Selection probabilities ``softmax(scores / tau)``, computed with the max subtracted."""
    tau = check_tau(tau)
    arr = _finite_scores(scores)
    z = (arr - arr.max()) / tau
    w = np.exp(z)
    return w / w.sum()


def soft_best_of_n_select(scores: ArrayLike, tau: float, rng: np.random.Generator | int | None = None) -> int:
    """Sample one candidate with probability ∝ exp(score/tau); seeded for reproducibility."""
    return select(scores, "soft_bon", 1, tau, rng)[0]


def bon_kl_bound(n: float) -> float:
    """Upper bound on KL(BoN_N[pi] ‖ pi): ``log N − (N−1)/N`` (exact for continuous rewards)."""
    n = check_n(n)
    return math.log(n) - (n - 1.0) / n


def selection_kl_bound(algorithm: Algorithm, n: int) -> float:
    """KL bound reported for a request's selection rule.

    Soft BoN picks one of N i.i.d. candidates, so its output law has density ratio at most N
    to pi and ``log N`` bounds its KL; BoN has the sharper analytic bound.
    """
    if algorithm == "bon":
        return bon_kl_bound(n)
    if algorithm == "soft_bon":
        return math.log(check_n(n))
    raise ValueError(f"unknown algorithm {algorithm!r}")


def _sorted_cdf(rewards: ArrayLike, probs: ArrayLike | None) -> tuple[FloatArray, FloatArray, FloatArray, np.ndarray]:
    """Rewards sorted ascending, their probabilities, the CDF after each point, and the order."""
    r = as_rewards(rewards)
    p = as_probs(probs, r.size)
    order = np.argsort(r, kind="stable")
    rs, ps = r[order], p[order]
    cdf = np.minimum(np.cumsum(ps), 1.0)
    return rs, ps, cdf, order


def bon_probabilities(rewards: ArrayLike, n: float, probs: ArrayLike | None = None) -> FloatArray:
    """Probability that BoN_N picks each support point (the law ``T[pi]``), ties sharing mass.

    A block of tied rewards with CDF jumping from ``a`` to ``b`` receives ``b^N − a^N`` which
    is split in proportion to the points' own probabilities.
    """
    n = check_n(n)
    rs, ps, cdf, order = _sorted_cdf(rewards, probs)
    out_sorted = np.empty_like(rs)
    # Group ties: indices where the reward value changes.
    starts = np.flatnonzero(np.r_[True, rs[1:] != rs[:-1]])
    ends = np.r_[starts[1:], rs.size]
    for s, e in zip(starts, ends, strict=True):
        lo = cdf[s - 1] if s > 0 else 0.0
        hi = cdf[e - 1]
        mass = hi**n - lo**n
        block = ps[s:e]
        tot = block.sum()
        out_sorted[s:e] = mass * block / tot if tot > 0 else 0.0
    out = np.empty_like(out_sorted)
    out[order] = out_sorted
    return out


def bon_value(rewards: ArrayLike, n: float, probs: ArrayLike | None = None) -> float:
    """Exact ``E_{y~BoN_N[pi]}[r(y)]``: the expected max of N i.i.d. draws from ``pi``.

    Written as ``r_max − Σ_k C_k^N (r_(k+1) − r_(k))`` (integration by parts), which is the
    form whose derivative in ``pi`` is :func:`iama.variations.bon_first_variation`.
    """
    n = check_n(n)
    rs, _, cdf, _ = _sorted_cdf(rewards, probs)
    gaps = np.diff(rs)
    return float(rs[-1] - np.sum(cdf[:-1] ** n * gaps))


def bon_selection_weights(scores: ArrayLike, n: int) -> FloatArray:
    """P(sample j is BoN_N's pick) when N of the M samples are drawn without replacement.

    The sample of ascending rank i wins iff it is in the subset and the other N−1 members all
    rank below it: ``C(i−1, N−1)/C(M, N)``. Ties rank by index like :func:`best_of_n_select`
    (the lower index wins). ``Σ_j w_j·r_k(y_j)`` is then an unbiased estimate of any reward
    ``r_k`` of the BoN_N output of the sampling policy, selected by ``scores``.
    """
    s = as_rewards(scores, name="scores")
    m = s.size
    if int(n) != n or n < 1:
        raise ValueError(f"N must be a positive integer, got {n}")
    n = int(n)
    if n > m:
        raise ValueError(f"need at least N={n} samples, got {m}")
    # ascending rank; among equal scores the higher index ranks lower so the lower index wins
    order = np.lexsort((-np.arange(m), s))
    i = np.arange(1, m + 1, dtype=np.float64)
    logw = np.full(m, -np.inf)
    ok = i >= n
    log_c_mn = _lgamma(m + 1) - _lgamma(n + 1) - _lgamma(m - n + 1)
    logw[ok] = _lgamma(i[ok]) - _lgamma(n) - _lgamma(i[ok] - n + 1) - log_c_mn
    w_sorted = np.exp(logw)
    w = np.empty(m)
    w[order] = w_sorted / w_sorted.sum()
    return w


def bon_unbiased_estimate(rewards: ArrayLike, n: int) -> float:
    """Unbiased estimate of the BoN_N reward of the *sampling* policy from M >= N samples.

    Averages the max over all size-N subsets without replacement:
    ``Σ_i C(i−1, N−1)/C(M, N) · r_(i)``. Unlike :func:`bon_value` (which treats the M samples
    as the population) this is what evaluation should report.
    """
    r = as_rewards(rewards)
    return float(np.dot(bon_selection_weights(r, n), r))


def soft_bon_subset_weights(
    scores: ArrayLike, n: int, tau: float, subsets: int = 256, rng: np.random.Generator | int | None = 0
) -> FloatArray:
    """P(sample j is soft BoN_N's pick): N drawn without replacement, then one ∝ exp(score/τ).

    Monte Carlo over ``subsets`` random N-subsets (exact when N = M).
    """
    s = as_rewards(scores, name="scores")
    m = s.size
    if n > m or n < 1:
        raise ValueError(f"need 1 <= N <= {m}, got {n}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    w = np.zeros(m)
    reps = 1 if n == m else subsets
    for _ in range(reps):
        idx = gen.choice(m, size=n, replace=False) if n < m else np.arange(m)
        w[idx] += soft_best_of_n_probabilities(s[idx], tau)
    return w / reps


def _lgamma(x: ArrayLike) -> FloatArray:
    return np.vectorize(math.lgamma, otypes=[np.float64])(np.asarray(x, dtype=np.float64))


def _soft_terms(rewards: ArrayLike, tau: float, probs: ArrayLike | None) -> tuple[FloatArray, FloatArray, float]:
    """Rewards, tilted weights ``p·exp((r−max)/tau)`` and the shift ``max/tau``."""
    tau = check_tau(tau)
    r = as_rewards(rewards)
    p = as_probs(probs, r.size)
    m = r.max()
    w = p * np.exp((r - m) / tau)
    return r, w, m / tau


def soft_bon_value(rewards: ArrayLike, tau: float, probs: ArrayLike | None = None) -> float:
    """``E_{T[pi]}[r]`` for soft BoN, ``T ∝ exp(r/tau)·pi``."""
    r, w, _ = _soft_terms(rewards, tau, probs)
    return float(np.dot(w, r) / w.sum())


def soft_bon_kl(rewards: ArrayLike, tau: float, probs: ArrayLike | None = None) -> float:
    """Exact KL(T[pi] ‖ pi) = E_T[r]/tau − log E_pi[exp(r/tau)], computed stably."""
    tau = check_tau(tau)
    r, w, shift = _soft_terms(rewards, tau, probs)
    log_z = shift + math.log(w.sum())
    t = w / w.sum()
    return float(max(np.dot(t, r) / tau - log_z, 0.0))
