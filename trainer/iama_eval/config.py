"""The configs of ``iama eval`` and ``iama sweep`` (YAML or CLI flags), validated before any model loads.

:class:`EvalConfig` and :class:`SweepConfig` are what the commands read; both hand the sampler
the same :class:`GenerationSpec` (what changes the samples besides model, prompts and M), and
a sweep expands into one training config per run (:func:`run_configs`). The configs live
below every command so that each command, and the sampler, can be typed with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from iama.configfile import read_yaml, validate_config
from iama.dtypes import Dtype
from iama.objective import Algorithm, ObjectiveType, linear_reward_mix
from iama.rewards.reward_set import RewardSpec
from iama.sampling import SamplingSettings
from iama_trainer.config import PromptsConfig, TrainConfig, load_config


class GenerationSpec(BaseModel):
    """How completions are sampled, beyond the model, the prompts and M: part of the cache key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int = Field(ge=1)
    sampling: SamplingSettings
    seed: int
    dtype: Dtype = Field(default="auto", description="HF sampling dtype (vLLM picks its own)")


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
        default_factory=SamplingSettings,
        description="set it to the models' training sampling (stop tokens included: see each model's "
        "iama.json, training.sampling); the default is TRL's (no top-k, no stop)",
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

    @property
    def generation(self) -> GenerationSpec:
        return GenerationSpec(max_tokens=self.max_tokens, sampling=self.sampling, seed=self.seed)


def load_eval_config(path: str | None, **overrides: object) -> EvalConfig:
    """The YAML file (if any) with the non-``None`` CLI ``overrides`` on top, validated."""
    raw = read_yaml(path) if path else {}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return validate_config(EvalConfig, raw, f"invalid eval config {path}" if path else "invalid eval config")


class SweepEval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompts: PromptsConfig = PromptsConfig(limit=16)
    samples_per_prompt: int = Field(default=16, ge=1)
    budgets: list[int] = [1, 4, 8, 16]
    max_tokens: int = Field(default=64, ge=1)
    sampling: SamplingSettings = Field(
        default_factory=SamplingSettings,
        description="default: the runs' own (the base config's with `set`): evaluation samples the "
        "distribution training sampled, stop tokens included",
    )
    engine: str = Field(default="auto", pattern="^(auto|vllm|hf)$")
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="HF sampling dtype; float32 samples a CPU-trained policy exactly, which a "
        "sequence KL measured on the samples needs",
    )
    steps: list[int] | None = Field(
        default=None, description="with snapshots: evaluate only the snapshots of these steps (default: all)"
    )
    kl_samples: int | None = Field(
        default=None,
        ge=1,
        description="with snapshots: measure the KL on the first this many samples of each prompt "
        "(each costs two forward passes; default: all)",
    )
    snapshots: bool = Field(
        default=False,
        description="evaluate every weight snapshot of every run (set snapshot_steps) with its "
        "sequence KL to the base, for comparisons at matched KL (iama_eval.kl_path)",
    )

    @property
    def generation(self) -> GenerationSpec:
        return GenerationSpec(max_tokens=self.max_tokens, sampling=self.sampling, seed=self.seed, dtype=self.dtype)


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = Field(description="training config: a preset name or a YAML path")
    output_dir: Path = Path("runs/sweep")
    weights: list[list[float]] = Field(description="aggregation weights over the base config's tasks, one per point")
    objective_types: list[ObjectiveType] = ["iama", "linear"]
    seeds: list[int] = [0, 1, 2]
    set: dict[str, Any] = Field(default_factory=dict, description="overrides for every run (dotted keys)")
    eval: SweepEval = SweepEval()
    bootstrap: int = Field(default=1000, ge=10)
    include_base: bool = Field(default=True, description="evaluate the untrained base model too")
    reuse: dict[ObjectiveType, Path] = Field(
        default_factory=dict,
        description="objective type -> another snapshot sweep's output_dir whose runs of that type this "
        "sweep shares: they are not trained again, and their evaluated points are read from its "
        "path_scores.json. For runs that train the same model in both sweeps (checked): linear GRPO "
        "trains on one mixed reward, whatever the users' algorithm or aggregation",
    )

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        if not self.weights or not self.seeds or not self.objective_types:
            raise ValueError("weights, seeds and objective_types must not be empty")
        if max(self.eval.budgets) > self.eval.samples_per_prompt:
            raise ValueError("eval.samples_per_prompt must be >= the largest budget")
        if extra := sorted(set(self.reuse) - set(self.objective_types)):
            raise ValueError(f"reuse: {extra} not among objective_types {self.objective_types}")
        if self.reuse and not self.eval.snapshots:
            raise ValueError("reuse: needs eval.snapshots (points are shared through path_scores.json)")
        if "sampling" not in self.eval.model_fields_set:
            self.eval.sampling = load_config(self.base, self.set).sampling
        return self


def load_sweep_config(path: str) -> SweepConfig:
    return validate_config(SweepConfig, read_yaml(path), f"invalid sweep config {path}")


def run_label(objective_type: str, weights: list[float], seed: int) -> str:
    return f"{objective_type}_w{'-'.join(f'{w:g}' for w in weights)}_s{seed}"


def run_configs(cfg: SweepConfig) -> dict[str, TrainConfig]:
    """One training config per (objective type, weights, seed), seed by seed: a sweep cut short
    has every method at its first seeds rather than one method at all of them."""
    out: dict[str, TrainConfig] = {}
    for seed in cfg.seeds:
        for weights in cfg.weights:
            for objective_type in cfg.objective_types:
                label = run_label(objective_type, weights, seed)
                root = cfg.reuse.get(objective_type, cfg.output_dir)
                overrides = {
                    **cfg.set,
                    "output_dir": str(root / "runs" / label),
                    "objective.type": objective_type,
                    "objective.aggregation.weights": list(weights),
                    "seed": seed,
                }
                out[label] = load_config(cfg.base, overrides)
    return out


# What a run writes and how long it runs, not what it trains (steps: see training_identity)
_NOT_TRAINING = {"output_dir", "objective", "steps", "snapshot_steps", "save_steps", "save_total_limit",
                 "logging_steps", "tensorboard"}  # fmt: skip


def training_identity(cfg: TrainConfig) -> dict[str, Any]:
    """What decides the model a run trains up to a step, as JSON: the whole config but where and
    how often it writes and, for linear GRPO, the objective beyond the one reward it trains on.
    The number of steps counts only where it changes the learning rate along the way."""
    identity = cfg.model_dump(mode="json", exclude=_NOT_TRAINING)
    if cfg.lr_scheduler_type != "constant":
        identity["steps"] = cfg.steps
    objective = cfg.objective
    if objective.type == "linear":
        identity["objective"] = {"type": "linear", "reward": linear_reward_mix(objective)}
    else:
        identity["objective"] = objective.model_dump(mode="json")
    return identity


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """The dotted key of the first place two JSON values differ, or None if they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
        return None
    return None if a == b else (where or "(the whole value)")
