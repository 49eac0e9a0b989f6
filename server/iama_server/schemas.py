"""Request and response models: ``/v1/align`` and the OpenAI-compatible endpoints.

Requests are validated here, declaratively: every number has a range (a seed of 2^80 or a NaN
temperature is a 400 naming the field, never an engine error), every list a length (OpenAI's 4
stop sequences, 256 messages, 64 reward weights, 16 prompts), and OpenAI fields this server
does not implement are refused by name (``unsupported_parameter``) rather than silently
ignored. The client SDK mirrors these; keep field names stable.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from iama.objective import Algorithm

MAX_SEED = 2**63 - 1  # what vLLM serialises and numpy/torch generators accept
MAX_N = 256  # the largest budget any server setting allows (ServerSettings.max_budget)
MAX_MESSAGES = 256
MAX_REWARD_WEIGHTS = 64
MAX_PROMPTS = 16

StopString = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ChatMessage(BaseModel):
    """A chat turn; ``content`` may be a string or OpenAI's list of text parts (joined)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        texts = []
        for part in v:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise PydanticCustomError(
                    "unsupported_parameter",
                    "content parts of type {kind!r} are not supported; send text",
                    {"kind": kind},
                )
            texts.append(part["text"])
        return "".join(texts)


class SamplingFields(_Request):
    """Sampling of the N candidates (vLLM); ``max_tokens`` is also checked against settings."""

    temperature: float = Field(default=1.0, ge=0.0, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: StopString | list[StopString] | None = Field(default=None, max_length=4)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)


RewardWeights = Annotated[
    dict[Annotated[str, StringConstraints(max_length=128)], float], Field(max_length=MAX_REWARD_WEIGHTS)
]


class AlignRequest(SamplingFields):
    """Sample ``budget`` candidates, score them with ``reward_weights``, return the chosen one.

    ``prompt`` is wrapped as a single user message when the model has a chat template (set
    ``raw_prompt`` to send it verbatim); ``messages`` is a chat conversation.
    """

    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, max_length=MAX_MESSAGES, validate_default=True)
    raw_prompt: bool = False
    reward_weights: RewardWeights | None = None
    budget: int | None = Field(default=None, ge=1, le=MAX_N)
    algorithm: Algorithm = "bon"
    alignment_temperature: float | None = Field(default=None, gt=0.0, le=1e6, description="τ of soft best-of-N")
    normalize: bool = True
    return_candidates: bool = False
    model: str | None = Field(default=None, max_length=256)

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


class AlignmentExtras(_Request):
    """IAMA's extra body fields on the OpenAI endpoints (pass with ``extra_body=``)."""

    reward_weights: RewardWeights | None = None
    best_of: int | None = Field(default=None, ge=1, le=MAX_N, description="the budget N")
    alignment: Algorithm = "bon"
    alignment_temperature: float | None = Field(default=None, gt=0.0, le=1e6)


class StreamOptions(_Request):
    include_usage: bool = False


# OpenAI request fields this server does not implement. Sending one with a value that would
# change the answer is a 400 naming it; its neutral value (None, false, empty, text format) is fine.
UNSUPPORTED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "response_format",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "echo",
    "suffix",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "reasoning_effort",
    "store",
    "metadata",
    "service_tier",
)


def _neutral(name: str, value: Any) -> bool:
    if value in (None, False, 0, [], {}, ""):
        return True
    return name == "response_format" and value == {"type": "text"}


class _OpenAIBase(SamplingFields, AlignmentExtras):
    model: str | None = Field(default=None, max_length=256)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    # declared so that they are refused by name, not as unknown fields (see UNSUPPORTED)
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None
    response_format: Any = None
    logit_bias: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    echo: Any = None
    suffix: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    store: Any = None
    metadata: Any = None
    service_tier: Any = None

    @field_validator(*UNSUPPORTED)
    @classmethod
    def _unsupported(cls, v: Any, info: ValidationInfo) -> Any:
        if not _neutral(str(info.field_name), v):
            raise PydanticCustomError(
                "unsupported_parameter", "{name} is not supported by this server", {"name": info.field_name}
            )
        return None

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
    """``prompt`` is one string or a list of up to 16; choices come back per prompt, in order."""

    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v: str | list[str]) -> list[str]:
        prompts = [v] if isinstance(v, str) else v
        if not 1 <= len(prompts) <= MAX_PROMPTS:
            raise ValueError(f"give 1 to {MAX_PROMPTS} prompts, got {len(prompts)}")
        if any(not p for p in prompts):
            raise ValueError("must not be empty")
        return prompts

    @property
    def prompts(self) -> list[str]:
        assert isinstance(self.prompt, list)  # normalised by the validator
        return self.prompt

    @model_validator(mode="after")
    def _stream_one_prompt(self) -> CompletionRequest:
        if self.stream and len(self.prompts) > 1:
            raise PydanticCustomError("value_error", "stream supports one prompt only")
        return self


class ChatCompletionRequest(_OpenAIBase):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)

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


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatChoiceMessage
    finish_reason: str | None
    logprobs: None = None
    alignment: AlignmentInfo | None = Field(description="the choice's scores; null for plain generation")


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None
    alignment: AlignmentInfo | None = Field(description="the choice's scores; null for plain generation")


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCardInfo(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCardInfo]


class RewardInfo(BaseModel):
    name: str
    type: str
    description: str
    parameters: dict[str, Any]
    normalization: dict[str, Any] | None
    ready: bool = Field(description="loaded and run once at start-up")


class MetaAlignment(BaseModel):
    tasks: list[dict[str, Any]]
    aggregation: dict[str, Any] | None
    objective_type: str | None
    base_model: str | None


class RewardsList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RewardInfo]
    default_reward_weights: dict[str, float] | None
    meta_aligned_for: MetaAlignment
    limits: dict[str, int]


class Health(BaseModel):
    status: Literal["ok", "starting", "failed"]
    model: str | None = None
    detail: str | None = None


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
