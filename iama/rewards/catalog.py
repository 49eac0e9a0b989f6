"""Rewards by name: the built-in reward modules, registered, and the lookup from a spec to an instance.

A spec string (``"length"``, ``"hf:/path/to/rm"``) plus keyword parameters goes in; a
:class:`~iama.rewards.base.RewardFunction` comes out, or an error that lists what is known. The
concrete rewards register themselves into :mod:`iama.rewards.base` when imported; this module
sits above them and imports them all, so that a lookup always sees every built-in reward and
no module imports one that imports it back.
"""

from __future__ import annotations

from typing import Any

# Imported for registration: each module's @register / @register_prefix fills base's registry.
from iama.rewards import judge, neural, number, remote, rules  # noqa: F401
from iama.rewards.base import PREFIX_REGISTRY, REGISTRY, RewardFunction, UnknownRewardError


def available_rewards() -> dict[str, str]:
    """Registered plain names with their one-line descriptions."""
    return {k: d for k, (_, d) in sorted(REGISTRY.items())}


def create_reward(spec: str, **params: Any) -> RewardFunction:
    """Instantiate a reward from its spec; unknown names and bad parameters raise clear errors."""
    if ":" in spec:
        prefix, target = spec.split(":", 1)
        if prefix in PREFIX_REGISTRY:
            if not target:
                raise ValueError(f"reward spec {spec!r} needs a target after '{prefix}:'")
            return PREFIX_REGISTRY[prefix](target, **params)
    if spec not in REGISTRY:
        known = ", ".join(sorted(REGISTRY)) + ", " + ", ".join(f"{p}:<...>" for p in sorted(PREFIX_REGISTRY))
        raise UnknownRewardError(f"unknown reward {spec!r}; known: {known}")
    factory, _ = REGISTRY[spec]
    try:
        return factory(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for reward {spec!r}: {exc}") from exc
