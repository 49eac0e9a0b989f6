"""The sample-and-score setup shared by every command: engine, prompts, warmed rewards.

``iama eval``, ``iama probe``, ``iama sweep`` and its KL path all do the same before sampling:
pick the engine, load the held-out prompts and render them for the chat template, bind the
rewards to the base model's tokenizer and warm them up (a broken reward fails here, naming
itself, not after minutes of sampling). :func:`scoring_setup` does it once and returns a
:class:`ScoringSetup`; :meth:`ScoringSetup.sample_and_score` then turns a model into its
(cached) generations and their raw scores, (prompts, M) per reward.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iama.rewards import Prompt, RewardSet, RewardSpec, bind_tokenizer
from iama_eval.config import GenerationSpec
from iama_eval.generate import Generations, generate
from iama_trainer.config import PromptsConfig
from iama_trainer.data import load_prompts, to_trl_prompt

log = logging.getLogger("iama.eval")


def resolve_engine(engine: str) -> str:
    """``auto``: vLLM where it is installed, else HF ``generate``."""
    if engine != "auto":
        return engine
    return "vllm" if importlib.util.find_spec("vllm") else "hf"


def score_generations(
    rewards: RewardSet,
    prompts: list[Prompt],
    completions: list[list[str]],
    token_lengths: list[list[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Raw scores, shape (prompts, M) per reward; prompts as the model saw them (conversations);
    token-length rewards count the generated tokens (``token_lengths``) when given."""
    flat_p = [p for p, g in zip(prompts, completions, strict=True) for _ in g]
    flat_c = [c for g in completions for c in g]
    counts = None if token_lengths is None else [n for g in token_lengths for n in g]
    m = len(completions[0])
    return {k: v.reshape(len(prompts), m) for k, v in rewards.score(flat_p, flat_c, token_counts=counts).items()}


@dataclass(frozen=True)
class ScoringSetup:
    """What sampling and scoring need, built once per command by :func:`scoring_setup`."""

    engine: str  # "vllm" | "hf", resolved
    prompts: list[Prompt]  # held-out prompts: strings or conversations
    trl_prompts: list[Any]  # the same, as the chat template gets them (to_trl_prompt)
    rewards: RewardSet  # bound to the base tokenizer, warmed up

    def sample_and_score(
        self, model_path: str, texts: list[str], m: int, spec: GenerationSpec, cache: Path
    ) -> tuple[Generations, dict[str, np.ndarray]]:
        """M (cached) samples per prompt of ``model_path`` and their raw scores, (prompts, M) each;
        ``texts`` is what the cache file records for each prompt."""
        gen = generate(model_path, texts, self.trl_prompts, m, spec, self.engine, cache)
        raw = score_generations(self.rewards, self.trl_prompts, gen.completions, gen.token_lengths)
        return gen, raw


def scoring_setup(
    prompts: PromptsConfig, rewards: Mapping[str, RewardSpec], base_path: str, engine: str = "auto"
) -> ScoringSetup:
    """Engine resolved, prompts loaded and rendered, ``rewards`` bound to ``base_path``'s
    tokenizer and warmed up (each warm-up logged)."""
    reward_set = RewardSet(bind_tokenizer(rewards, base_path))
    for name, seconds in reward_set.warm_up().items():
        log.info("reward %s ready (warm-up %.2f s)", name, seconds)
    loaded = load_prompts(prompts)
    return ScoringSetup(resolve_engine(engine), loaded, [to_trl_prompt(p, prompts) for p in loaded], reward_set)
