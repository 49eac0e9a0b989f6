"""The reward-function interface and the registry that reward modules register into.

A reward scores a *batch* of (prompt, completion) pairs at once: neural rewards are only
efficient batched, and the server batches across concurrent requests. A reward is created from
a spec string (``"length"``, ``"hf:/path/to/rm"``) plus keyword parameters, so the trainer
config, the model card and the server all name rewards the same way.

This module is the bottom of ``iama.rewards``: the concrete rewards (``rules``, ``number``,
``neural``, ``remote``) import :func:`register` from here, and the lookup by spec, which needs
them all registered, lives above them in :mod:`iama.rewards.catalog`. Nothing here imports a
concrete reward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from iama._arrays import FloatArray


@runtime_checkable
class RewardFunction(Protocol):
    """What every reward provides. ``params`` must be JSON-serialisable (it goes to iama.json).

    ``score`` gets the text of each prompt's last user turn; a reward that sets
    ``conversational = True`` gets each prompt as a list of chat turns instead (``RewardSet``).
    ``judges_partial_text = True`` says the score of a completion's beginning is meaningful
    (sentiment, a reward model), so early rejection may use it; a length reward sets it False.
    Rewards that do not say are not used on partial text.
    """

    name: str
    description: str

    @property
    def params(self) -> dict[str, Any]: ...

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> FloatArray: ...


@runtime_checkable
class ScalarReward(Protocol):
    """A reward that depends on a completion only through one number: its length, the number
    it answers. ``scalar`` reads that number (NaN where there is none) and ``of_scalar`` maps
    numbers to rewards, so ``score == of_scalar(scalar(...))``. The probe reports the base
    model's distribution of the scalar and :mod:`iama.optimum` predicts the trained one."""

    scalar_name: str

    def scalar(self, completions: Sequence[str], token_counts: Sequence[int] | None = None) -> FloatArray: ...

    def of_scalar(self, x: Any) -> FloatArray: ...


RewardFactory = Callable[..., RewardFunction]

REGISTRY: dict[str, tuple[RewardFactory, str]] = {}  # name -> (factory, one-line description)
PREFIX_REGISTRY: dict[str, RewardFactory] = {}  # prefix of ``prefix:<target>`` specs -> factory


class UnknownRewardError(KeyError):
    """Raised for a reward name that is not registered; the message lists what is."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0])


def register(name: str, description: str) -> Callable[[RewardFactory], RewardFactory]:
    """Register a factory under ``name``; the factory's kwargs are the reward's parameters."""

    def deco(factory: RewardFactory) -> RewardFactory:
        if name in REGISTRY:
            raise ValueError(f"reward {name!r} registered twice")
        REGISTRY[name] = (factory, description)
        return factory

    return deco


def register_prefix(prefix: str) -> Callable[[RewardFactory], RewardFactory]:
    """Register a factory for specs ``prefix:<target>`` (e.g. ``hf:<path-or-hub-id>``)."""

    def deco(factory: RewardFactory) -> RewardFactory:
        PREFIX_REGISTRY[prefix] = factory
        return factory

    return deco


def check_scores(scores: Any, n: int, name: str) -> FloatArray:
    """Rewards must return one finite float per completion; catch broken rewards early."""
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if arr.size != n:
        raise ValueError(f"reward {name!r} returned {arr.size} scores for {n} completions")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"reward {name!r} returned non-finite scores")
    return arr
