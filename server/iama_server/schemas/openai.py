"""The OpenAI-compatible surface: ``/v1/completions``, ``/v1/chat/completions`` and
``/v1/models``, with IAMA's extra body fields (``reward_weights``, ``best_of``, ``alignment``, …).

OpenAI fields this server does not implement are declared once, as :data:`Unsupported`, and
refused by name (``unsupported_parameter``) when sent with a value that would change the
answer, rather than silently ignored (vLLM warns and ignores them).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from iama_server.schemas.common import (
    MAX_LOGPROBS,
    MAX_MESSAGES,
    MAX_N,
    MAX_PROMPTS,
    AdaptiveBudget,
    Budget,
    ChatMessage,
    EarlyRejectionReport,
    RewardScore,
    RewardWeights,
    RubricFields,
    SamplingFields,
    ServedAlgorithm,
    StrictRequest,
    Usage,
    VoteReport,
    budget_rules,
    present,
    vote_rules,
    when,
)


def _refuse_unless_neutral(v: Any, info: ValidationInfo) -> Any:
    """Its neutral value (None, false, 0, empty) is fine; anything else would change the answer."""
    if v not in (None, False, 0, [], {}, ""):
        raise PydanticCustomError(
            "unsupported_parameter", "{name} is not supported by this server", {"name": info.field_name}
        )
    return None


_REFUSED = AfterValidator(_refuse_unless_neutral)
Unsupported = Annotated[Any, _REFUSED, Field(description="not supported by this server: refused unless neutral")]


class AlignmentExtras(AdaptiveBudget, RubricFields):
    """IAMA's extra body fields on the OpenAI endpoints (pass with ``extra_body=``)."""

    reward_weights: RewardWeights | None = None
    best_of: Budget = Field(default=None, description="the budget N, or 'auto'; at least n")
    alignment: ServedAlgorithm = "bon"
    alignment_temperature: float | None = Field(default=None, gt=0.0, le=1e6)


class StreamOptions(StrictRequest):
    include_usage: bool = False
    continuous_usage_stats: bool = Field(
        default=False, description="vLLM's extension: the usage so far on every chunk (load generators read it)"
    )


class _OpenAIBase(SamplingFields, AlignmentExtras):
    cross_field_rules = (
        *budget_rules("best_of"),
        *vote_rules("alignment", "best_of"),
        when(present("stream", {"const": True}), {"properties": {"n": {"const": 1}}}),
    )

    model: str | None = Field(default=None, max_length=256)
    n: int = Field(default=1, ge=1, le=MAX_N, description="at most best_of; 1 with stream")
    stream: bool = Field(default=False, description="with n = 1 only")
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    tools: Unsupported = None
    tool_choice: Unsupported = None
    functions: Unsupported = None
    function_call: Unsupported = None
    parallel_tool_calls: Unsupported = None
    logit_bias: Unsupported = None
    suffix: Unsupported = None
    audio: Unsupported = None
    modalities: Unsupported = None
    prediction: Unsupported = None
    web_search_options: Unsupported = None
    reasoning_effort: Unsupported = None
    store: Unsupported = None
    metadata: Unsupported = None
    service_tier: Unsupported = None

    @field_validator("n")
    @classmethod
    def _n_le_best_of(cls, v: int, info: ValidationInfo) -> int:
        best_of = info.data.get("best_of")
        if isinstance(best_of, int) and v > best_of:
            raise ValueError("n must be <= best_of")
        return v

    @model_validator(mode="after")
    def _budget_fields(self) -> _OpenAIBase:
        self._check_budget_fields(self.best_of, "best_of")
        self._check_vote(self.alignment, self.best_of, "alignment", "best_of")
        if self.alignment == "vote" and self.n > 1:
            raise PydanticCustomError("value_error", "alignment 'vote' returns one choice: n must be 1", {})
        return self

    @field_validator("stream")
    @classmethod
    def _stream_single(cls, v: bool, info: ValidationInfo) -> bool:
        if v and (info.data.get("n") or 1) > 1:
            raise ValueError("stream supports n = 1 only")
        return v


# The OpenAI fields refused by name, as declared above (the SDK leaves them out).
UNSUPPORTED = tuple(name for name, f in _OpenAIBase.model_fields.items() if _REFUSED in f.metadata)

TokenIds = list[Annotated[int, Field(ge=0, le=2**31 - 1)]]
_TOKEN_IDS_SCHEMA = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}, "minItems": 1}
_ONE_PROMPT_SCHEMA = [{"type": "string", "minLength": 1}, _TOKEN_IDS_SCHEMA]
# What _prompt_list and _prompts accept, as JSON Schema says it: one prompt (text or token ids)
# or a list of 1 to MAX_PROMPTS of them, none empty.
_PROMPT_SCHEMA = {
    "anyOf": [
        *_ONE_PROMPT_SCHEMA,
        {"type": "array", "items": {"anyOf": _ONE_PROMPT_SCHEMA}, "minItems": 1, "maxItems": MAX_PROMPTS},
    ],
    "title": "Prompt",
}


def _prompt_list(v: Any) -> Any:
    """OpenAI's four prompt shapes (a string, strings, token ids, lists of token ids) as one
    list of prompts, each a string or token ids; anything else is left to fail validation."""
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return [v]
    return v


class CompletionRequest(_OpenAIBase):
    """``prompt`` is a string, token ids, or a list of up to 16 of either; choices come back
    per prompt, in order. ``logprobs`` (0–20) returns the chosen candidate's token log-probs
    with that many alternatives; ``echo`` prepends the prompt (and, with ``logprobs``, its
    tokens' log-probs), as evaluation harnesses need for log-likelihoods."""

    cross_field_rules = (  # a stream carries one prompt
        when(
            present("stream", {"const": True}),
            {"properties": {"prompt": {"anyOf": [*_ONE_PROMPT_SCHEMA, {"type": "array", "maxItems": 1}]}}},
        ),
    )

    prompt: Annotated[list[str | TokenIds], BeforeValidator(_prompt_list), WithJsonSchema(_PROMPT_SCHEMA)]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    top_logprobs: Unsupported = None  # a chat field; completions take ``logprobs``

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v: list[str | list[int]]) -> list[str | list[int]]:
        if not 1 <= len(v) <= MAX_PROMPTS:
            raise ValueError(f"give 1 to {MAX_PROMPTS} prompts, got {len(v)}")
        if any(len(p) == 0 for p in v):
            raise ValueError("must not be empty")
        return v

    @property
    def prompts(self) -> list[str | list[int]]:
        return self.prompt

    @model_validator(mode="after")
    def _stream_one_prompt(self) -> CompletionRequest:
        if self.stream and len(self.prompts) > 1:
            raise PydanticCustomError("value_error", "stream supports one prompt only")
        return self


class ChatCompletionRequest(_OpenAIBase):
    """``logprobs`` returns the chosen candidate's token log-probs, ``top_logprobs`` (0–20)
    alternatives at each position."""

    cross_field_rules = (when(present("top_logprobs", {"type": "integer"}), present("logprobs", {"const": True})),)

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS, description="requires logprobs: true")
    echo: Unsupported = None  # a completions field

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs requires logprobs: true")
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
    algorithm: ServedAlgorithm
    kl_bound: float
    early_rejection: EarlyRejectionReport | None = None
    budget_spent: int | None = None
    vote: VoteReport | None = None
    eligible: int | None = Field(
        default=None,
        description="candidates the request's rules allowed (valid response_format, finished with "
        "prefer_finished); 0: none did, and the best-scoring one is returned anyway. Absent without such a rule",
    )


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class _Choice(BaseModel):
    index: int
    finish_reason: str | None
    logprobs: dict[str, Any] | None = Field(default=None, description="the chosen candidate's, in OpenAI's shape")
    alignment: AlignmentInfo | None = Field(description="the choice's scores; null for plain generation")


class ChatChoice(_Choice):
    message: ChatChoiceMessage


class CompletionChoice(_Choice):
    text: str


class _OpenAIResponse(BaseModel):
    id: str
    object: str
    created: int
    model: str
    choices: list[Any]
    usage: Usage


class ChatCompletionResponse(_OpenAIResponse):
    object: Literal["chat.completion"]
    choices: list[ChatChoice]


class CompletionResponse(_OpenAIResponse):
    object: Literal["text_completion"]
    choices: list[CompletionChoice]


class ModelCardInfo(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str = Field(description="the base's path or hub id, or the adapter's directory")
    parent: str | None = Field(default=None, description="an adapter's base model (its id); null for the base")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCardInfo]
