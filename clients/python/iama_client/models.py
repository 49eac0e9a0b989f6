"""Request parameters and response models mirroring the server's JSON (``iama_server.schemas``).

Request parameters are ``TypedDict``s: each is the one definition of a call's keyword
arguments for both clients (``**params: Unpack[AlignParams]``) and is validated by pydantic
before anything is sent. Response models keep unknown fields (``extra="allow"``) so a newer
server never breaks an older client.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, with_config
from typing_extensions import TypedDict

Algorithm = Literal["bon", "soft_bon", "vote"]  # vote: the most frequent answer (see VoteParams)


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Model):
    role: str
    content: str


class RewardScore(_Model):
    raw: float
    normalized: float


class Candidate(_Model):
    index: int
    text: str
    scores: dict[str, RewardScore]
    weighted_score: float
    chosen: bool
    finish_reason: str | None = None
    completion_tokens: int
    rejected_at: int | None = None  # early rejection: tokens when it was stopped


class CheckpointReport(_Model):
    tokens: int
    rewards: list[str]
    kept: list[int]
    rejected: list[int]


class EarlyRejectionReport(_Model):
    checkpoints: list[CheckpointReport]
    keep: float
    candidates_started: int
    generated_tokens: int
    plain_bon_tokens_bound: int


class VoteReport(_Model):
    answer: str | None  # None: no candidate gave one (the best-scoring one came back)
    counts: dict[str, float]


class Usage(_Model):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int  # prompt, completion and judge tokens
    judge_tokens: int = 0  # what the served model read to judge the request's rubrics


class Timings(_Model):
    queue_s: float
    generation_s: float
    scoring_s: float
    total_s: float


class AlignResponse(_Model):
    id: str
    object: str = "alignment"
    created: int
    model: str
    text: str
    chosen_index: int
    finish_reason: str | None = None
    algorithm: Algorithm
    budget: int
    alignment_temperature: float | None = None
    reward_weights: dict[str, float]
    weighted_score: float
    scores: dict[str, RewardScore]
    kl_bound: float
    candidates: list[Candidate] | None = None
    early_rejection: EarlyRejectionReport | None = None
    budget_spent: int | None = None
    eligible: int | None = None  # candidates the request's rules allowed (format, finished); 0: none did
    vote: VoteReport | None = None
    usage: Usage
    timings: Timings


class RewardInfo(_Model):
    name: str
    type: str
    description: str
    parameters: dict[str, Any]
    normalization: dict[str, Any] | None = None


class MetaAlignment(_Model):
    tasks: list[dict[str, Any]]
    aggregation: dict[str, Any] | None = None
    objective_type: str | None = None
    base_model: str | None = None


class RewardsList(_Model):
    data: list[RewardInfo]
    default_reward_weights: dict[str, float] | None = None
    meta_aligned_for: MetaAlignment
    limits: dict[str, Any]

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.data]


class ModelInfo(_Model):
    id: str
    object: str = "model"
    owned_by: str | None = None
    root: str | None = None  # the base's path or hub id, or the adapter's directory
    parent: str | None = None  # an adapter's base (its id); None for the base


class ModelList(_Model):
    data: list[ModelInfo]

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.data]


class AdapterDeleted(_Model):
    id: str
    object: str = "model"
    deleted: bool


UsageGroup = Literal["key", "model", "route", "day"]


class UsageTotals(_Model):
    group: str | None = None  # the key, model, route or UTC day (YYYY-MM-DD); None without group_by
    requests: int
    prompt_tokens: int
    generated_tokens: int  # every candidate's tokens, the discarded ones too
    judge_tokens: int
    candidates: int  # candidates started


class UsageReport(_Model):
    object: str = "usage"
    group_by: UsageGroup | None = None
    data: list[UsageTotals]


class Health(_Model):
    status: str
    model: str | None = None
    detail: str | None = None

    @property
    def ready(self) -> bool:
        return self.status == "ok"


class AlignmentInfo(_Model):
    weighted_score: float | None = None
    scores: dict[str, RewardScore]
    budget: int
    algorithm: Algorithm
    kl_bound: float
    early_rejection: EarlyRejectionReport | None = None
    budget_spent: int | None = None
    eligible: int | None = None
    vote: VoteReport | None = None


class ChatChoiceMessage(_Model):
    role: str
    content: str | None = None


class TopLogprob(_Model):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(_Model):
    """The chosen candidate's token log-probs (``logprobs=True``), OpenAI's chat shape."""

    content: list[TokenLogprob] | None = None


class ChatChoice(_Model):
    index: int
    message: ChatChoiceMessage
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None
    alignment: AlignmentInfo | None = None


class ChatCompletion(_Model):
    id: str
    object: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage

    @property
    def text(self) -> str:
        return self.choices[0].message.content or ""


class ChunkDelta(_Model):
    role: str | None = None
    content: str | None = None


class ChunkChoice(_Model):
    index: int
    delta: ChunkDelta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(_Model):
    """One server-sent event of a streamed chat completion (OpenAI's ``chat.completion.chunk``)."""

    id: str
    object: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None

    @property
    def text(self) -> str:
        return "".join(c.delta.content or "" for c in self.choices)


MessagesLike = list[ChatMessage | dict[str, str]]


@with_config(ConfigDict(extra="forbid"))
class EarlyRejection(TypedDict, total=False):
    """Stop the weakest running candidates at each checkpoint (tokens, or fractions of
    ``max_tokens`` in (0, 1)), keeping the best ``keep``; both default to the server's.
    ``oversample``: start as many candidates as plain BoN_N's token cost allows."""

    checkpoints: list[int | float]
    keep: float
    oversample: bool


@with_config(ConfigDict(extra="forbid"))
class JSONSchemaFormat(TypedDict, total=False):
    name: str
    description: str
    schema: dict[str, Any]
    strict: bool


@with_config(ConfigDict(extra="forbid"))
class ResponseFormat(TypedDict, total=False):
    """``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {"schema": ...}}``:
    every candidate is constrained to valid JSON (vLLM's structured outputs)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat


@with_config(ConfigDict(extra="forbid"))
class _Sampling(TypedDict, total=False):
    response_format: ResponseFormat
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    stop: str | list[str]
    presence_penalty: float
    frequency_penalty: float
    ignore_eos: bool  # vLLM's: generate max_tokens whatever the end token (load tests)
    stop_token_ids: list[int]  # vLLM's: token ids that end a candidate as the EOS does
    include_stop_str_in_output: bool  # vLLM's: keep the stop string or token that ended a candidate in its text


@with_config(ConfigDict(extra="forbid"))
class VoteParams(TypedDict, total=False):
    """With algorithm "vote": one way to read each candidate's answer."""

    regex: str  # the first match (its first group, if any)
    json_path: str  # dotted path into the answer parsed as JSON
    reward: str  # a scalar reward's value (e.g. the number a `number` reward reads)
    weighted: bool  # each vote counts its soft-BoN probability


@with_config(ConfigDict(extra="forbid"))
class _Search(TypedDict, total=False):
    target_score: float  # with an "auto" budget: stop sampling once a candidate reaches it
    max_budget: int  # with an "auto" budget
    early_rejection: EarlyRejection
    alignment_temperature: float
    prefer_finished: bool  # a candidate cut at max_tokens only when no finished one is (default: with response_format)
    vote: VoteParams  # with algorithm "vote"
    rubrics: dict[str, str]  # name -> rubric text, judged by the served model; weight each in reward_weights


@with_config(ConfigDict(extra="forbid"))
class AlignParams(_Sampling, _Search, total=False):
    """Keyword arguments of ``align`` (besides ``prompt``); see the server's ``/v1/align``."""

    model: str  # the base or an adapter served on it (``models()``); omitted: the server's default
    messages: MessagesLike
    reward_weights: dict[str, float]
    budget: int | Literal["auto"]
    algorithm: Algorithm
    return_candidates: bool
    normalize: bool
    raw_prompt: bool


@with_config(ConfigDict(extra="forbid"))
class ChatParams(_Sampling, _Search, total=False):
    """Keyword arguments of ``chat`` (besides ``messages``): OpenAI's fields plus alignment."""

    model: str
    reward_weights: dict[str, float]
    best_of: int | Literal["auto"]
    alignment: Algorithm
    n: int
    logprobs: bool  # the chosen candidate's token log-probs
    top_logprobs: int  # with logprobs: that many alternatives per token (0–20)
