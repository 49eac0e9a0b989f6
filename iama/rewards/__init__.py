"""Reward functions, their registry, normalisation and weighted aggregation."""

from iama.rewards.aggregation import WeightError, validate_weights, weighted_score
from iama.rewards.base import (
    RewardFunction,
    UnknownRewardError,
    available_rewards,
    create_reward,
    register,
    register_prefix,
)
from iama.rewards.normalization import RewardStats, fit_stats, normalize
from iama.rewards.reward_set import DEFAULT_REWARDS, RewardSet, RewardSpec, bind_tokenizer

__all__ = [
    "DEFAULT_REWARDS",
    "RewardFunction",
    "RewardSet",
    "RewardSpec",
    "RewardStats",
    "UnknownRewardError",
    "WeightError",
    "available_rewards",
    "bind_tokenizer",
    "create_reward",
    "fit_stats",
    "normalize",
    "register",
    "register_prefix",
    "validate_weights",
    "weighted_score",
]
