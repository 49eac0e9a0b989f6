"""``POST /v1/align``: IAMA's own surface. One prompt (or conversation), reward weights, a budget N
and an algorithm in; the chosen completion with its scores, every candidate on request, the
early-rejection report, usage and timings out."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from iama_server.schemas.common import (
    MAX_MESSAGES,
    AdaptiveBudget,
    Budget,
    ChatMessage,
    EarlyRejectionReport,
    RewardScore,
    RewardWeights,
    RubricFields,
    SamplingFields,
    ServedAlgorithm,
    Usage,
    VoteReport,
    budget_rules,
    present,
    vote_rules,
)


class AlignRequest(SamplingFields, AdaptiveBudget, RubricFields):
    """Sample ``budget`` candidates, score them with ``reward_weights``, return the chosen one.

    ``prompt`` is wrapped as a single user message when the model has a chat template (set
    ``raw_prompt`` to send it verbatim); ``messages`` is a chat conversation. Give exactly one.
    """

    cross_field_rules = (
        {"anyOf": [present("prompt", {"type": "string"}), present("messages", {"type": "array"})]},
        {"not": {"allOf": [present("prompt", {"type": "string"}), present("messages", {"type": "array"})]}},
        *budget_rules("budget"),
        *vote_rules("algorithm", "budget"),
    )

    prompt: str | None = Field(
        default=None, description="give exactly one of prompt or messages", json_schema_extra={"minLength": 1}
    )
    messages: list[ChatMessage] | None = Field(
        default=None,
        max_length=MAX_MESSAGES,
        validate_default=True,
        description="give exactly one of prompt or messages",
        json_schema_extra={"minItems": 1},  # checked by _one_input, whose message names the rule
    )
    raw_prompt: bool = False
    reward_weights: RewardWeights | None = None
    budget: Budget = None
    algorithm: ServedAlgorithm = "bon"
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
        self._check_vote(self.algorithm, self.budget, "algorithm", "budget")
        return self


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
    algorithm: ServedAlgorithm
    budget: int
    alignment_temperature: float | None
    reward_weights: dict[str, float]
    weighted_score: float
    scores: dict[str, RewardScore]
    kl_bound: float = Field(description="upper bound on KL(selection ‖ policy) in nats")
    candidates: list[Candidate] | None = None
    early_rejection: EarlyRejectionReport | None = None
    budget_spent: int | None = Field(default=None, description="budget 'auto': candidates actually sampled")
    vote: VoteReport | None = Field(default=None, description="algorithm 'vote': the answer and the votes")
    eligible: int | None = Field(
        default=None,
        description="candidates the request's rules allowed (valid response_format, finished with "
        "prefer_finished); 0: none did, and the best-scoring one is returned anyway. Absent without such a rule",
    )
    usage: Usage
    timings: Timings
