"""Reward normalisation statistics measured on the *base* model's own samples.

They make reward weights comparable across rewards, and they are what the server uses to
normalise scores for this model, so they are stored in iama.json.
"""

from __future__ import annotations

import logging
from typing import Any

from iama.rewards import RewardSet, RewardStats, fit_stats
from iama.rewards.normalization import degenerate_warning
from iama.sampling import SamplingSettings
from iama_trainer.sampling import hf_sample


def measure_reward_stats(
    model: Any,
    tokenizer: Any,
    prompts: list[Any],
    rewards: RewardSet,
    samples_per_prompt: int,
    max_new_tokens: int,
    sampling: SamplingSettings,
    normalized: bool = True,
) -> tuple[dict[str, RewardStats], list[str]]:
    """Statistics of every reward on base-model samples, and a warning for each reward that is
    nearly constant on them (:func:`degenerate_warning`), logged as well."""
    groups, lengths, _ = hf_sample(
        model,
        tokenizer,
        prompts,
        samples_per_prompt,
        max_new_tokens,
        sampling,
        batch_prompts=2,
        progress="reward statistics (base-model samples)",
    )
    flat_prompts = [p for p, g in zip(prompts, groups, strict=True) for _ in g]
    flat = [c for g in groups for c in g]
    scores = rewards.score(flat_prompts, flat, token_counts=[n for g in lengths for n in g])
    warnings = [w for name, v in scores.items() if (w := degenerate_warning(name, v, normalized)) is not None]
    for w in warnings:
        logging.getLogger("iama.trainer").warning("%s", w)
    return {name: fit_stats(v) for name, v in scores.items()}, warnings
