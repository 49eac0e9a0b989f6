"""The training config (YAML), validated with pydantic so mistakes fail before any model loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from iama.configfile import ConfigError, read_yaml, validate_config
from iama.objective import Objective, ObjectiveType
from iama.rewards.reward_set import RewardSpec
from iama.sampling import SamplingSettings

PRESETS_DIR = Path(__file__).parent / "configs"
SCALE_REWARDS_DEFAULT: Literal["group", "batch", "none"] = "none"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptsConfig(_Strict):
    """``builtin`` (the shipped prompt set), a local ``.jsonl``/``.json``/``.parquet``/``.csv``
    file, or a Hugging Face dataset name. ``format`` says what the ``field`` column holds: a
    prompt's ``text``; an OpenAI ``messages`` conversation; or an Anthropic HH transcript
    (``hh``, e.g. the ``chosen`` column). For the last two the prompt is the conversation up to
    its final answer, multi-turn, as the chat template and conversational rewards see it."""

    source: str = "builtin"
    split: str = "train"
    field: str = "prompt"
    format: Literal["text", "messages", "hh"] = "text"
    limit: int | None = Field(default=None, ge=1)
    chat: bool = Field(default=True, description="wrap each prompt as a user message (chat template)")
    system_prompt: str | None = None


class NormalizationConfig(_Strict):
    """Reward statistics measured on the base model's samples before training.

    ``enabled``: train on rewards standardised by them, so that task weights, τ and the
    surrogate are in units of each reward's base-model std (and the objective depends on the
    sample that measured them). Off, training sees raw rewards (the paper's setting), and the
    statistics are still measured when ``record`` is on, for ``iama.json``: the server uses
    them to make request weights comparable across rewards.
    """

    enabled: bool = True
    record: bool = Field(default=True, description="measure and store them in iama.json even when not enabled")
    prompts: int = Field(default=16, ge=1)
    samples_per_prompt: int = Field(default=4, ge=1)


class KLControl(_Strict):
    """Fixed β, or the paper's adaptive rule (``kl_control.py``): after every step
    ``β ← β·(1 + rate·clip((KL − target)/target, ±0.2))``, KL being TRL's logged k3 estimate."""

    type: Literal["fixed", "adaptive"] = "fixed"
    target: float = Field(default=0.1, gt=0)
    rate: float = Field(default=0.1, gt=0, le=1, description="the paper: 0.1 (Ziegler et al.: n_steps/horizon)")
    min_beta: float | None = Field(default=None, gt=0)
    max_beta: float | None = Field(default=None, gt=0)


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
    scale_rewards: Literal["group", "batch", "none"] = Field(
        default=SCALE_REWARDS_DEFAULT,
        description="divide advantages by the group's (or batch's) std: off by default, see the README",
    )
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field(
        default="dapo", description="TRL's default; 'grpo' normalises per sequence length (length-biased)"
    )
    lr_scheduler_type: Literal["constant", "linear", "cosine", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    max_completion_length: int = Field(default=64, ge=1)
    sampling: SamplingSettings = Field(
        default_factory=SamplingSettings,
        description="one distribution for reward statistics, rollouts (TRL) and evaluation",
    )
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_grad_norm: float = Field(default=1.0, gt=0)

    lora: LoraSettings = LoraSettings()
    bf16: Literal["auto"] | bool = "auto"
    rollouts: Literal["auto", "hf", "vllm"] = "auto"
    vllm_gpu_memory_utilization: float = Field(default=0.3, gt=0, le=1)
    vllm_mode: Literal["colocate", "server"] = Field(
        default="colocate",
        description="vLLM rollouts inside the training processes, or on a `trl vllm-serve` server on its own GPUs",
    )
    vllm_server_base_url: str | None = Field(
        default=None, description="vllm_mode server: the server, e.g. http://gpu-node-0:8000"
    )
    vllm_server_timeout: float = Field(default=240.0, gt=0, description="vllm_mode server: seconds to wait for it")
    rollout_func: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="module:function generating the completions instead of TRL (its rollout_func): "
        "agents, environments, or fixed rollouts for reproducibility checks",
    )

    snapshot_steps: int | None = Field(
        default=None,
        ge=1,
        description="save the policy's weights every this many steps under output_dir/snapshots "
        "(the KL path a matched-KL comparison evaluates; full fine-tuning only)",
    )
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
        for name, spec in self.rewards.items():
            if spec.type == "judge" and not (spec.params.get("model") or spec.params.get("url")):
                raise ValueError(
                    f"rewards.{name}: a judge in training needs `model` (a causal LM scored in this process) "
                    "or `url` (an OpenAI-compatible server); without either it is judged by a serving engine"
                )
        return self

    @model_validator(mode="after")
    def _snapshots_need_full_weights(self) -> TrainConfig:
        if self.snapshot_steps and self.lora.enabled:
            raise ValueError("snapshot_steps: snapshots are full models; not available with lora.enabled")
        if self.rollout_func and self.sampling.stop:
            raise ValueError("sampling.stop: a rollout_func generates its own completions; stop them there")
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


def import_function(path: str) -> Any:
    """``module:function`` → the function (a config's import path)."""
    import importlib

    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"rollout_func {path!r} cannot be imported: {exc}") from exc


RUN_FILE = "run.json"  # in a run's output_dir: the resolved config and the reward statistics


def recorded_config(output_dir: Path) -> TrainConfig | None:
    """The config a run in ``output_dir`` was trained with, as its ``run.json`` records it (None
    before it has one): what another sweep checks before reusing the run."""
    record = output_dir / RUN_FILE
    return TrainConfig.model_validate(json.loads(record.read_text())["config"]) if record.is_file() else None
