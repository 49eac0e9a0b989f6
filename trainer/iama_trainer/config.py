"""The training config (YAML), validated with pydantic so mistakes fail before any model loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from iama.configfile import ConfigError, read_yaml, validate_config
from iama.objective import Objective, ObjectiveType
from iama.rewards.reward_set import RewardSpec

PRESETS_DIR = Path(__file__).parent / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptsConfig(_Strict):
    """``builtin`` (the shipped prompt set), a local ``.jsonl``/``.json``/``.parquet``/``.csv``
    file, or a Hugging Face dataset name."""

    source: str = "builtin"
    split: str = "train"
    field: str = "prompt"
    limit: int | None = Field(default=None, ge=1)
    chat: bool = Field(default=True, description="wrap each prompt as a user message (chat template)")
    system_prompt: str | None = None


class NormalizationConfig(_Strict):
    """Reward statistics measured on the base model's samples before training."""

    enabled: bool = True
    prompts: int = Field(default=16, ge=1)
    samples_per_prompt: int = Field(default=4, ge=1)


class KLControl(_Strict):
    """Fixed β, or the adaptive controller of Ziegler et al. steering KL to ``target``."""

    type: Literal["fixed", "adaptive"] = "fixed"
    target: float = Field(default=0.05, gt=0)
    horizon: int = Field(default=100, ge=1)
    min_beta: float = Field(default=1e-4, gt=0)
    max_beta: float = Field(default=10.0, gt=0)


class LoraSettings(_Strict):
    enabled: bool = False
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    merge: bool = Field(default=True, description="merge the adapter into the saved checkpoint")


class ObjectiveConfig(Objective):
    """``type: iama`` trains on first variations; ``type: linear`` is standard GRPO on the same
    (weighted) rewards: the paper's baseline."""

    type: ObjectiveType = "iama"


class TrainConfig(_Strict):
    model: str = "default"
    output_dir: Path = Path("runs/iama")
    prompts: PromptsConfig = PromptsConfig()
    rewards: dict[str, RewardSpec]
    objective: ObjectiveConfig
    normalization: NormalizationConfig = NormalizationConfig()

    group_size: int = Field(default=8, ge=2, description="M: completions per prompt (TRL num_generations)")
    prompts_per_step: int = Field(default=2, ge=1, description="prompts per optimizer step, all processes")
    steps: int = Field(default=50, ge=1)
    learning_rate: float = Field(default=1e-5, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    beta: float = Field(default=0.04, ge=0)
    kl_control: KLControl = KLControl()
    epsilon: float = Field(default=0.2, gt=0, description="PPO clip range")
    num_iterations: int = Field(default=1, ge=1, description="PPO epochs per generation batch")
    scale_rewards: Literal["group", "batch", "none"] = "group"
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "grpo"
    max_completion_length: int = Field(default=64, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_grad_norm: float = Field(default=1.0, gt=0)

    lora: LoraSettings = LoraSettings()
    bf16: Literal["auto"] | bool = "auto"
    rollouts: Literal["auto", "hf", "vllm"] = "auto"
    vllm_gpu_memory_utilization: float = Field(default=0.3, gt=0, le=1)

    save_steps: int = Field(default=25, ge=1)
    save_total_limit: int | None = Field(default=2, ge=1)
    logging_steps: int = Field(default=1, ge=1)
    tensorboard: bool = True
    seed: int = 0

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainConfig:
        names = set(self.rewards)
        for i, task in enumerate(self.objective.tasks):
            if not task.weights:
                raise ValueError(f"objective.tasks.{i}.weights must name at least one reward")
            unknown = set(task.weights) - names
            if unknown:
                raise ValueError(
                    f"objective.tasks.{i}.weights: unknown reward(s) {sorted(unknown)}; defined: {sorted(names)}"
                )
            if any(w < 0 for w in task.weights.values()) or not any(w > 0 for w in task.weights.values()):
                raise ValueError(f"objective.tasks.{i}.weights must be >= 0 and not all zero")
        return self

    @property
    def name(self) -> str:
        return self.output_dir.name


def resolve_config_path(path_or_preset: str) -> Path:
    """A YAML path, or the name of a shipped preset (``length``, ``sentiment``)."""
    p = Path(path_or_preset)
    if p.is_file():
        return p
    preset = PRESETS_DIR / f"{path_or_preset.removesuffix('.yaml')}.yaml"
    if preset.is_file():
        return preset
    presets = sorted(x.stem for x in PRESETS_DIR.glob("*.yaml"))
    raise ConfigError(f"no config file {path_or_preset!r} and no preset of that name (presets: {presets})")


def load_config(path_or_preset: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The validated config of a YAML file or preset, with ``--set`` overrides applied."""
    path = resolve_config_path(path_or_preset)
    raw = read_yaml(path)
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return validate_config(TrainConfig, raw, f"invalid config {path}")


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """``objective.tasks.0.n=2`` style override; digits index into lists.

    A path that runs through a scalar or past the end of a list is a :class:`ConfigError`
    naming the override, not an ``IndexError`` from deep inside.
    """
    node: Any = raw
    *parents, leaf = dotted.split(".")
    for depth, key in enumerate([*parents, leaf]):
        here = ".".join([*parents, leaf][: depth + 1])
        last = depth == len(parents)
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"--set {dotted}: {here} is not an item of a list of {len(node)}")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise ConfigError(f"--set {dotted}: {'.'.join([*parents, leaf][:depth])} is a value, not a section")
