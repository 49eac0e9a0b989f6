"""Request and response models: ``/v1/align`` and the OpenAI-compatible endpoints.

Requests are validated here, declaratively: every number has a range (a seed of 2^80 or a NaN
temperature is a 400 naming the field, never an engine error), every list a length (OpenAI's 4
stop sequences, 256 messages, 64 reward weights, 16 prompts), and OpenAI fields this server
does not implement are refused by name (``unsupported_parameter``) rather than silently
ignored. The client SDK mirrors these; keep field names stable.
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from iama.objective import Algorithm
from iama.seeds import MAX_SEED  # what vLLM serialises and numpy/torch generators accept

MAX_N = 256  # the largest budget any server setting allows (ServerSettings.max_budget)
MAX_MESSAGES = 256
MAX_REWARD_WEIGHTS = 64
MAX_PROMPTS = 16
MAX_LOGPROBS = 20  # vLLM's default max_logprobs, and OpenAI's top_logprobs limit

StopString = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class ChatMessage(BaseModel):
    """A chat turn; ``content`` may be a string or OpenAI's list of text parts (joined)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)

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


class JSONSchemaFormat(_Request):
    """OpenAI's ``response_format.json_schema``: the schema every candidate must follow."""

    name: str = Field(default="response", min_length=1, max_length=64)
    description: str | None = Field(default=None, max_length=4096)
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    """``text`` (unconstrained), ``json_object`` (any JSON object) or ``json_schema``: decoded
    under vLLM's structured outputs, so every one of the N candidates is valid and best-of-N
    chooses among valid answers."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            if self.json_schema is None:
                raise PydanticCustomError("value_error", "json_schema is required with type 'json_schema'")
            raise PydanticCustomError("value_error", "json_schema only applies with type 'json_schema'")
        return self


class SamplingFields(_Request):
    """Sampling of the N candidates (vLLM); ``max_tokens`` is also checked against settings."""

    temperature: float = Field(default=1.0, ge=0.0, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: StopString | list[StopString] | None = Field(default=None, max_length=4)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    response_format: ResponseFormat | None = None
    ignore_eos: bool = Field(
        default=False, description="vLLM's extension: generate max_tokens whatever the model's end token (load tests)"
    )


Checkpoints = list[Annotated[int, Field(ge=1, le=2**31 - 1)] | Annotated[float, Field(gt=0.0, lt=1.0)]]


def check_checkpoints(v: list[int | float]) -> list[int | float]:
    """One kind (tokens or fractions of max_tokens), strictly increasing: shared by the request
    field and the server's default."""
    if len({isinstance(x, float) for x in v}) > 1:
        raise ValueError("give checkpoints all as token counts or all as fractions of max_tokens")
    if any(b <= a for a, b in itertools.pairwise(v)):
        raise ValueError("checkpoints must increase strictly")
    return v


def checkpoints_in_tokens(checkpoints: list[int | float], max_tokens: int) -> list[int]:
    """Checkpoints as token counts: a fraction f is ⌈f · max_tokens⌉."""
    return [x if isinstance(x, int) else max(1, math.ceil(x * max_tokens)) for x in checkpoints]


class EarlyRejection(_Request):
    """Stop the weakest candidates early (speculative rejection): at each checkpoint (tokens
    generated), score the running candidates' partial texts with the request's rewards that can
    judge partial text, and keep the best ``keep`` fraction; the rest are aborted inside vLLM.
    Checkpoints are token counts, or fractions of ``max_tokens`` (all in (0, 1)), which keep
    their meaning whatever length a request asks for. Left out, checkpoints and keep are the
    server's (``early_rejection_checkpoints``, ``early_rejection_keep``): ``{}`` asks for its
    defaults. ``oversample`` starts more than N candidates, as many as fit in plain BoN_N's
    token cost (N × max_tokens, counting every candidate to its checkpoint)."""

    checkpoints: Checkpoints | None = Field(default=None, min_length=1, max_length=8)
    keep: float | None = Field(
        default=None, gt=0.0, le=1.0, description="fraction of the running candidates kept at each checkpoint"
    )
    oversample: bool = Field(
        default=False, description="start as many candidates as plain BoN_N's token cost allows (at least N)"
    )

    @field_validator("checkpoints")
    @classmethod
    def _increasing(cls, v: list[int | float] | None) -> list[int | float] | None:
        return None if v is None else check_checkpoints(v)

    def in_tokens(self, max_tokens: int) -> list[int]:
        """The checkpoints as token counts (resolved ones: the server fills in its defaults)."""
        assert self.checkpoints is not None, "the service resolves the server's default checkpoints"
        return checkpoints_in_tokens(self.checkpoints, max_tokens)


def _budget_value(v: Any) -> Any:
    """An integer budget or 'auto', with one message for anything else (not one per union member)."""
    if v is None or v == "auto" or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    raise PydanticCustomError("value_error", "must be a whole number from 1 to {max} or 'auto'", {"max": MAX_N})


Budget = Annotated[Annotated[int, Field(ge=1, le=MAX_N)] | Literal["auto"] | None, BeforeValidator(_budget_value)]


class _AdaptiveBudget(_Request):
    """``budget: "auto"``: sample in waves (2, 4, 8, … up to ``max_budget``) and stop as soon as a
    candidate's weighted score reaches ``target_score``."""

    target_score: float | None = Field(default=None, ge=-1e6, le=1e6, description="for budget 'auto'")
    max_budget: int | None = Field(default=None, ge=1, le=MAX_N, description="for budget 'auto'")
    early_rejection: EarlyRejection | None = None

    def _check_budget_fields(self, budget: object, name: str) -> None:
        auto = budget == "auto"
        if auto and self.target_score is None:
            raise PydanticCustomError("value_error", "target_score is required with {name}: 'auto'", {"name": name})
        if not auto and (self.target_score is not None or self.max_budget is not None):
            field = "target_score" if self.target_score is not None else "max_budget"
            raise PydanticCustomError(
                "value_error", "{field} only applies with {name}: 'auto'", {"field": field, "name": name}
            )
        if auto and self.early_rejection is not None:
            raise PydanticCustomError(
                "value_error", "early_rejection and {name}: 'auto' cannot be combined", {"name": name}
            )


RewardWeights = Annotated[
    dict[Annotated[str, StringConstraints(max_length=128)], float], Field(max_length=MAX_REWARD_WEIGHTS)
]


class AlignRequest(SamplingFields, _AdaptiveBudget):
    """Sample ``budget`` candidates, score them with ``reward_weights``, return the chosen one.

    ``prompt`` is wrapped as a single user message when the model has a chat template (set
    ``raw_prompt`` to send it verbatim); ``messages`` is a chat conversation.
    """

    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, max_length=MAX_MESSAGES, validate_default=True)
    raw_prompt: bool = False
    reward_weights: RewardWeights | None = None
    budget: Budget = None
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

    @model_validator(mode="after")
    def _budget_fields(self) -> AlignRequest:
        self._check_budget_fields(self.budget, "budget")
        return self


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
    rejected_at: int | None = Field(
        default=None, description="early rejection: tokens generated when it was stopped (text and scores partial)"
    )


class CheckpointReport(BaseModel):
    tokens: int
    rewards: list[str] = Field(description="the rewards that scored the partial texts (those that can)")
    kept: list[int]
    rejected: list[int]


class EarlyRejectionReport(BaseModel):
    checkpoints: list[CheckpointReport]
    keep: float
    candidates_started: int = Field(description="N, or more with oversample")
    generated_tokens: int
    plain_bon_tokens_bound: int = Field(
        description="upper bound on what plain best-of-N on the started candidates would have generated: "
        "rejected candidates run to max_tokens"
    )


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
    early_rejection: EarlyRejectionReport | None = None
    budget_spent: int | None = Field(default=None, description="budget 'auto': candidates actually sampled")
    usage: Usage
    timings: Timings


# ---------------------------------------------------------------- OpenAI-compatible


class AlignmentExtras(_AdaptiveBudget):
    """IAMA's extra body fields on the OpenAI endpoints (pass with ``extra_body=``)."""

    reward_weights: RewardWeights | None = None
    best_of: Budget = Field(default=None, description="the budget N, or 'auto'")
    alignment: Algorithm = "bon"
    alignment_temperature: float | None = Field(default=None, gt=0.0, le=1e6)


class StreamOptions(_Request):
    include_usage: bool = False
    continuous_usage_stats: bool = Field(
        default=False, description="vLLM's extension: the usage so far on every chunk (load generators read it)"
    )


# OpenAI request fields this server does not implement. Sending one with a value that would
# change the answer is a 400 naming it; its neutral value (None, false, empty, text format) is fine.
UNSUPPORTED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "logit_bias",
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


def _neutral(value: Any) -> bool:
    return value in (None, False, 0, [], {}, "")


def _refuse_unless_neutral(v: Any, info: ValidationInfo) -> Any:
    if not _neutral(v):
        raise PydanticCustomError(
            "unsupported_parameter", "{name} is not supported by this server", {"name": info.field_name}
        )
    return None


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
    logit_bias: Any = None
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
        return _refuse_unless_neutral(v, info)

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
        return self

    @field_validator("stream")
    @classmethod
    def _stream_single(cls, v: bool, info: ValidationInfo) -> bool:
        if v and (info.data.get("n") or 1) > 1:
            raise ValueError("stream supports n = 1 only")
        return v


TokenIds = list[Annotated[int, Field(ge=0, le=2**31 - 1)]]


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

    prompt: Annotated[list[str | TokenIds], BeforeValidator(_prompt_list)]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    top_logprobs: Any = None  # a chat field; completions take ``logprobs``

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v: list[str | list[int]]) -> list[str | list[int]]:
        if not 1 <= len(v) <= MAX_PROMPTS:
            raise ValueError(f"give 1 to {MAX_PROMPTS} prompts, got {len(v)}")
        if any(len(p) == 0 for p in v):
            raise ValueError("must not be empty")
        return v

    @field_validator("top_logprobs")
    @classmethod
    def _no_top_logprobs(cls, v: Any, info: ValidationInfo) -> Any:
        return _refuse_unless_neutral(v, info)

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

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: Any = None  # a completions field

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: Any, info: ValidationInfo) -> Any:
        return _refuse_unless_neutral(v, info)

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
    algorithm: Algorithm
    kl_bound: float
    early_rejection: EarlyRejectionReport | None = None
    budget_spent: int | None = None


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
