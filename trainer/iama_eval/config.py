"""Evaluation config (YAML or CLI flags), validated before any model is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from iama.configfile import read_yaml, validate_config
from iama.objective import Algorithm
from iama.rewards.reward_set import RewardSpec
from iama.sampling import SamplingSettings
from iama_trainer.config import PromptsConfig


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, str] = Field(description="label -> 'default' | path | hub id")
    output_dir: Path = Path("runs/eval")
    prompts: PromptsConfig = PromptsConfig(limit=16)
    rewards: dict[str, RewardSpec] | None = Field(default=None, description="default: the first model card's")
    rewards_from: str | None = Field(default=None, description="model label whose iama.json gives rewards + stats")
    weights: list[dict[str, float]] | None = Field(default=None, description="explicit weight vectors")
    grid: int = Field(default=5, ge=2, description="points of the weight grid over the first two rewards")
    budgets: list[int] = [1, 2, 4, 8, 16]
    algorithms: list[Algorithm] = ["bon"]
    tau: float = Field(default=0.1, gt=0)
    samples_per_prompt: int | None = Field(default=None, ge=1, description="M; default max(budgets)")
    max_tokens: int = Field(default=64, ge=1)
    sampling: SamplingSettings = Field(
        default_factory=SamplingSettings, description="the same distribution as training (no top-k by default)"
    )
    baseline: str | None = Field(default=None, description="label of the baseline model for the compute saving")
    candidate: str | None = Field(default=None, description="label of the IAMA model for the compute saving")
    engine: Literal["auto", "vllm", "hf"] = "auto"
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if not self.models:
            raise ValueError("models: give at least one model")
        if any(b < 1 for b in self.budgets) or not self.budgets:
            raise ValueError("budgets must be positive integers")
        m = self.samples
        if max(self.budgets) > m:
            raise ValueError(f"samples_per_prompt ({m}) must be >= the largest budget ({max(self.budgets)})")
        for label in (self.baseline, self.candidate, self.rewards_from):
            if label is not None and label not in self.models:
                raise ValueError(f"{label!r} is not one of models {sorted(self.models)}")
        return self

    @property
    def samples(self) -> int:
        return self.samples_per_prompt or max(self.budgets)


def load_eval_config(path: str | None, **overrides: object) -> EvalConfig:
    """The YAML file (if any) with the non-``None`` CLI ``overrides`` on top, validated."""
    raw = read_yaml(path) if path else {}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return validate_config(EvalConfig, raw, f"invalid eval config {path}" if path else "invalid eval config")
