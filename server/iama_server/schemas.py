"""Request and response models: ``/v1/align`` and the OpenAI-compatible endpoints.

The client SDK mirrors these; keep field names stable.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from iama.objective import Algorithm


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class SamplingFields(BaseModel):
    """Sampling of the N candidates (vLLM); bounds on max_tokens are checked against settings."""

    temperature: float = Field(default=1.0, ge=0.0, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None


class AlignRequest(SamplingFields):
    """Sample ``budget`` candidates, score them with ``reward_weights``, return the chosen one.

    ``prompt`` is wrapped as a single user message when the model has a chat template (set
    ``raw_prompt`` to send it verbatim); ``messages`` is a chat conversation.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, validate_default=True)
    raw_prompt: bool = False
    reward_weights: dict[str, float] | None = None
    budget: int | None = Field(default=None, ge=1)
    algorithm: Algorithm = "bon"
    alignment_temperature: float | None = Field(default=None, gt=0.0, description="τ of soft best-of-N")
    normalize: bool = True
    return_candidates: bool = False
    model: str | None = None

    @field_validator("messages")
    @classmethod
    def _one_input(cls, v: list[ChatMessage] | None, info: ValidationInfo) -> list[ChatMessage] | None:
        if (info.data.get("prompt") is None) == (v is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if v is not None and not v:
            raise ValueError("must not be empty")
        return v


class RewardScore(BaseModel):
    raw: float
    normalized: float


class Candidate(BaseModel):
    index: int
    text: str
    scores: dict[str, RewardScore]
    weighted_score: float
    chosen: bool
    finish_reason: str | None
    completion_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Timings(BaseModel):
    queue_s: float
    generation_s: float
    scoring_s: float
    total_s: float


class AlignResponse(BaseModel):
    id: str
    object: Literal["alignment"] = "alignment"
    created: int
    model: str
    text: str
    chosen_index: int
    finish_reason: str | None
    algorithm: Algorithm
    budget: int
    alignment_temperature: float | None
    reward_weights: dict[str, float]
    weighted_score: float
    scores: dict[str, RewardScore]
    kl_bound: float = Field(description="upper bound on KL(selection ‖ policy) in nats")
    candidates: list[Candidate] | None = None
    usage: Usage
    timings: Timings


# ---------------------------------------------------------------- OpenAI-compatible


class AlignmentExtras(BaseModel):
    """IAMA's extra body fields on the OpenAI endpoints (pass with ``extra_body=``)."""

    reward_weights: dict[str, float] | None = None
    best_of: int | None = Field(default=None, ge=1, description="the budget N")
    alignment: Algorithm = "bon"
    alignment_temperature: float | None = Field(default=None, gt=0.0)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _OpenAIBase(SamplingFields, AlignmentExtras):
    model_config = ConfigDict(extra="ignore")  # unknown OpenAI fields are accepted and ignored

    model: str | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("n")
    @classmethod
    def _n_le_best_of(cls, v: int, info: ValidationInfo) -> int:
        best_of = info.data.get("best_of")
        if best_of is not None and v > best_of:
            raise ValueError("n must be <= best_of")
        return v

    @field_validator("stream")
    @classmethod
    def _stream_single(cls, v: bool, info: ValidationInfo) -> bool:
        if v and (info.data.get("n") or 1) > 1:
            raise ValueError("stream supports n = 1 only")
        return v


class CompletionRequest(_OpenAIBase):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = None

    @field_validator("prompt")
    @classmethod
    def _single_prompt(cls, v: str | list[str]) -> str:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("one prompt per request is supported")
            v = v[0]
        if not v:
            raise ValueError("must not be empty")
        return v

    @field_validator("echo", "logprobs")
    @classmethod
    def _unsupported(cls, v: object, info: ValidationInfo) -> object:
        if v:
            raise ValueError(f"{info.field_name} is not supported")
        return v


class ChatCompletionRequest(_OpenAIBase):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("logprobs are not supported")
        return v

    @model_validator(mode="after")
    def _tokens(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None and self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        return self


class AlignmentInfo(BaseModel):
    """Per-choice alignment details attached to OpenAI responses as an extra field."""

    weighted_score: float | None
    scores: dict[str, RewardScore]
    budget: int
    algorithm: Algorithm
    kl_bound: float


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody

    @classmethod
    def make(cls, message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
        return cls(error=ErrorBody(message=message, type=type_, param=param, code=code)).model_dump()
