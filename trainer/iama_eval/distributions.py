"""Distributions of samples as numbers: summaries, histogram bins and masses (pure).

What the probe reports about a base model (:func:`describe`), how a scalar with "no value"
(NaN) travels through JSON (:func:`json_values` / :func:`from_json_values`), and the counting
behind every histogram: bins over a marginal's bulk, probability mass per bin, and the pools
of N = 1 samples that the KL-path histograms compare. The figures in :mod:`iama_eval.plots`
and :mod:`iama_eval.path_plots` only draw what is counted here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from iama._arrays import FloatArray

QUANTILES = (0.05, 0.2, 0.5, 0.8, 0.95)


def json_values(x: FloatArray) -> list[Any]:
    """``x`` (any shape) as nested lists for JSON, NaN ("no number") as null."""
    arr = np.asarray(x, dtype=object)
    arr[~np.isfinite(np.asarray(x, dtype=np.float64))] = None
    return arr.tolist()


def from_json_values(rows: list[Any]) -> FloatArray:
    """Flat float array of a (nested) list written by :func:`json_values`, null as NaN."""
    flat = np.asarray(rows, dtype=object).reshape(-1)
    return np.array([np.nan if v is None else v for v in flat], dtype=np.float64)


def describe(x: FloatArray) -> dict[str, Any]:
    """Mean, std, min, max and quantiles of the finite values, with the count of the others."""
    finite = x[np.isfinite(x)]
    out: dict[str, Any] = {"count": int(x.size), "missing": int(x.size - finite.size)}
    if finite.size:
        out |= {
            "mean": float(finite.mean()),
            "std": float(finite.std()),
            "min": float(finite.min()),
            "max": float(finite.max()),
            "quantiles": {f"p{round(q * 100)}": float(np.quantile(finite, q)) for q in QUANTILES},
        }
    return out


def scalar_bins(values: FloatArray, probs: FloatArray, count: int = 40) -> FloatArray:
    """Bin edges over the bulk of a marginal (up to its 85th percentile): a few huge values (a
    year, "1858") would otherwise squeeze everything else into one bar."""
    order = np.argsort(values)
    cdf = np.cumsum(probs[order]) / max(probs.sum(), 1e-12)
    hi = float(values[order][np.searchsorted(cdf, 0.85)]) if values.size else 1.0
    lo = float(values.min()) if values.size else 0.0
    return np.linspace(lo, max(hi, lo + 1.0), count + 1)


def binned(values: FloatArray, probs: FloatArray, bins: FloatArray) -> FloatArray:
    """Probability mass per bin, values outside the range clipped into the end bins."""
    mass, _ = np.histogram(np.clip(values, bins[0], bins[-1]), bins=bins, weights=probs)
    return mass


def pooled_bins(pools: dict[str, FloatArray], targets: list[float] | None = None, count: int = 40) -> FloatArray:
    """Shared bin edges for several pools of samples over what a reader needs to see: the bulk
    (the 2nd to 95th percentile of all finite values) and every target's neighbourhood (a
    tenth of the span either side). Values outside are counted apart (:func:`outside`), never
    drawn: a few outliers (a year, "1858") would otherwise flatten every pool into one bar."""
    finite = np.concatenate([x[np.isfinite(x)] for x in pools.values()])
    marks = [float(t) for t in targets or [] if np.isfinite(t)]
    lo = float(np.percentile(finite, 2)) if finite.size else 0.0
    hi = float(np.percentile(finite, 95)) if finite.size else 1.0
    lo, hi = min([lo, *marks]), max([hi, *marks])
    pad = 0.1 * max(hi - lo, 1.0)
    return np.linspace(lo - pad if marks else lo, hi + pad if marks else max(hi, lo + 1.0), count + 1)


def outside(x: FloatArray, bins: FloatArray) -> tuple[float, float, float]:
    """Fractions of ``x`` below the bins, above them, and with no value (NaN)."""
    ok = np.isfinite(x)
    n = max(x.size, 1)
    return float(np.sum(x[ok] < bins[0]) / n), float(np.sum(x[ok] > bins[-1]) / n), float(np.sum(~ok) / n)


def last_step_pools(points: dict[str, dict[str, Any]], last_steps: dict[str, int]) -> dict[str, FloatArray]:
    """N = 1 samples of the scalar in ``path_scores.json`` points: the base's, and each method's
    at its last step (``last_steps``: method → step), seeds pooled. Keys label the pools."""
    pools = {"base": from_json_values(points["base@0"]["scalar"])}
    for method, last in last_steps.items():
        vals = [
            v for p in points.values() if p["method"] == method and p["step"] == last for r in p["scalar"] for v in r
        ]
        pools[f"{method} (step {last})"] = from_json_values(vals)
    return pools
