"""Server configuration: environment variables ``IAMA_*``, an optional YAML file, CLI flags.

Precedence (highest first): CLI flags, environment, YAML file, defaults. API keys are
``SecretStr`` so they never appear in logs or reprs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from iama.rewards.reward_set import RewardSpec


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
    max_concurrent_requests: int = Field(default=16, ge=1, description="requests generating at once")
    max_queued_requests: int = Field(default=64, ge=0, description="admitted requests waiting for a slot")
    request_timeout_s: float = Field(default=300.0, gt=0)
    retry_after_s: int = Field(default=1, ge=1)
    graceful_shutdown_s: float = Field(default=60.0, ge=0)

    # Security: empty means open. Comma-separated in IAMA_API_KEYS.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)

    # Rewards: added to / overriding the model card's (or the default) reward set.
    rewards: dict[str, RewardSpec] = Field(default_factory=dict)
    default_reward_weights: dict[str, float] | None = None
    default_alignment_temperature: float = Field(default=0.1, gt=0)
    score_batch_size: int = Field(default=256, ge=1)
    score_batch_wait_ms: float = Field(default=2.0, ge=0)

    # vLLM engine.
    max_model_len: int | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    kv_cache_gb: float | None = Field(
        default=None, description="CPU KV cache in GiB (VLLM_CPU_KVCACHE_SPACE); default: that variable, else 4"
    )
    enforce_eager: bool = True
    seed: int = 0

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @classmethod
    def load(cls, config: Path | None = None, **overrides: Any) -> ServerSettings:
        """Defaults < YAML file < environment < explicit overrides (None values are ignored)."""
        file_values: dict[str, Any] = {}
        if config is not None:
            loaded = yaml.safe_load(Path(config).read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{config}: expected a mapping at the top level")
            file_values = loaded
        env_only = cls()  # environment + defaults
        explicit_env = env_only.model_fields_set
        merged = {**file_values, **{k: getattr(env_only, k) for k in explicit_env}}
        merged.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(merged)
