"""Pareto fronts, 2-D hypervolume and the inference-compute saving (pure)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from iama._arrays import FloatArray


def pareto_front(points: ArrayLike) -> FloatArray:
    """Non-dominated points (maximising every coordinate), sorted by the first coordinate."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError("points must be a non-empty (n, d) array")
    keep = []
    for i, x in enumerate(p):
        dominated = np.any(np.all(p >= x, axis=1) & np.any(p > x, axis=1))
        if not dominated:
            keep.append(i)
    front = np.unique(p[keep], axis=0)
    return front[np.argsort(front[:, 0])]


def hypervolume_2d(points: ArrayLike, ref: ArrayLike) -> float:
    """Area dominated by ``points`` and dominating ``ref`` (both coordinates maximised)."""
    r = np.asarray(ref, dtype=np.float64)
    front = pareto_front(points)
    front = front[np.all(front > r, axis=1)]
    if front.size == 0:
        return 0.0
    front = front[np.argsort(-front[:, 0])]  # x descending, so y ascending along the front
    area, prev_y = 0.0, r[1]
    for x, y in front:
        area += (x - r[0]) * (y - prev_y)
        prev_y = y
    return float(area)


def compute_saving(values_by_n: Mapping[int, float], target: float, tol: float = 0.0) -> int | None:
    """Smallest N whose value reaches ``target`` (minus ``tol``); None if no budget does."""
    for n in sorted(values_by_n):
        if values_by_n[n] >= target - tol:
            return n
    return None
