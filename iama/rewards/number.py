"""The ``number`` reward: how close the number a completion answers is to a user's target.

``r = max(−((x − target)/scale)², floor)`` where ``x`` is the first number written in the
completion (an integer or decimal in digits, optionally signed; ``1,000`` reads as 1000). A
completion with no number gets ``floor``, which is also the lowest any number can score, so
the reward is bounded and "no answer" is never better than a bad answer.

It depends on the completion only through ``x``: with two users (targets low and high) it is
the paper's Prop. 3.1 setting on a real LM, and the exact optimum over the base model's
marginal of ``x`` is computable (:mod:`iama.optimum`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from iama._arrays import FloatArray
from iama.rewards.base import register

# Signed integer or decimal, with optional thousands separators ("1,000" but not "1,2").
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def first_number(text: str) -> float | None:
    """The first number written in digits in ``text``, or None."""
    m = _NUMBER.search(text)
    if m is None:
        return None
    value = float(m.group(0).replace(",", ""))
    return value if math.isfinite(value) else None


@dataclass
class NumberReward:
    """``max(−((x − target)/scale)², floor)`` on the completion's first number ``x``."""

    judges_partial_text: ClassVar[bool] = False  # "1" may be the start of "15"

    target: float = 50.0
    scale: float = 50.0
    floor: float = -4.0
    name: str = "number"
    description: str = "max(-((x - target)/scale)^2, floor) on the first number x in the completion; floor if none"

    def __post_init__(self) -> None:
        if not math.isfinite(self.target):
            raise ValueError(f"target must be finite, got {self.target}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be > 0, got {self.scale}")
        if not (math.isfinite(self.floor) and self.floor < 0):
            raise ValueError(f"floor must be < 0 (the reward's peak is 0), got {self.floor}")

    @property
    def params(self) -> dict[str, Any]:
        return {"target": self.target, "scale": self.scale, "floor": self.floor}

    scalar_name: ClassVar[str] = "number"

    def scalar(self, completions: Sequence[str], token_counts: Sequence[int] | None = None) -> FloatArray:
        """The parsed number of each completion; NaN where there is none."""
        return np.array([v if (v := first_number(c)) is not None else math.nan for c in completions])

    def of_scalar(self, x: ArrayLike) -> FloatArray:
        """The reward of a parsed number (NaN: no number, scores ``floor``)."""
        v = np.asarray(x, dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            r = -(((v - self.target) / self.scale) ** 2)
        return np.where(np.isfinite(r), np.maximum(r, self.floor), self.floor)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> FloatArray:
        return self.of_scalar(self.scalar(completions))


register("number", NumberReward.description)(NumberReward)
