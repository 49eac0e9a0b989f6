"""Reward functions, their registry, normalisation and weighted aggregation."""

from iama.rewards.aggregation import (
    WeightError,
    normalize_scores,
    validate_weights,
    weighted_score,
    weighted_sum,
)
from iama.rewards.base import (
    RewardFunction,
    ScalarReward,
    UnknownRewardError,
    register,
    register_prefix,
)
from iama.rewards.catalog import available_rewards, create_reward
from iama.rewards.conversation import Prompt, as_conversation, completion_text, reward_prompt
from iama.rewards.normalization import RewardStats, fit_stats, normalize
from iama.rewards.reward_set import DEFAULT_REWARDS, RewardLoadError, RewardSet, RewardSpec, bind_tokenizer

__all__ = [
    "DEFAULT_REWARDS",
    "Prompt",
    "RewardFunction",
    "RewardLoadError",
    "RewardSet",
    "RewardSpec",
    "RewardStats",
    "ScalarReward",
    "UnknownRewardError",
    "WeightError",
    "as_conversation",
    "available_rewards",
    "bind_tokenizer",
    "completion_text",
    "create_reward",
    "fit_stats",
    "normalize",
    "normalize_scores",
    "register",
    "register_prefix",
    "reward_prompt",
    "validate_weights",
    "weighted_score",
    "weighted_sum",
]
