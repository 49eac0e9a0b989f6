"""What both API surfaces share: request fields (sampling, response format, early rejection,
the adaptive budget, reward weights), the scores and reports both return, and the info bodies
(``/health``, ``/v1/rewards``, ``/v1/adapters``).

Declarative only, as vLLM's ``protocol.py``: fields, bounds and validators. Every number has a
range (a seed of 2^80 or a NaN temperature is a 400 naming the field, never an engine error),
every list a length (OpenAI's 4 stop sequences, 256 messages, 64 reward weights). Where a rule
spans fields, the field's description says it, so the OpenAPI document states what the server
enforces. The client SDK mirrors these; keep field names stable.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import regex
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from iama.algorithms import check_checkpoints
from iama.seeds import MAX_SEED  # what vLLM serialises and numpy/torch generators accept

MAX_N = 256  # the largest budget any server setting allows (ServerSettings.max_budget)
MAX_MESSAGES = 256
MAX_REWARD_WEIGHTS = 64
MAX_PROMPTS = 16
MAX_LOGPROBS = 20  # vLLM's default max_logprobs, and OpenAI's top_logprobs limit

StopString = Annotated[str, StringConstraints(min_length=1, max_length=256)]


JSONSchema = dict[str, Any]


def present(field: str, schema: JSONSchema) -> JSONSchema:
    """JSON Schema: ``field`` is given and matches ``schema``."""
    return {"properties": {field: schema}, "required": [field]}


def absent(*fields: str) -> JSONSchema:
    """JSON Schema: none of ``fields`` is given a value (left out, or null)."""
    return {"properties": {f: {"type": "null"} for f in fields}}


def when(condition: JSONSchema, then: JSONSchema, otherwise: JSONSchema | None = None) -> JSONSchema:
    rule = {"if": condition, "then": then}
    return rule if otherwise is None else {**rule, "else": otherwise}


def _cross_field_schema(schema: JSONSchema, model: type[BaseModel]) -> None:
    """Every class's ``cross_field_rules`` along the MRO, stated in the model's JSON Schema
    (``allOf``) beside the validators that enforce them, so the OpenAPI document says what the
    server refuses."""
    rules = [r for cls in reversed(model.__mro__) for r in vars(cls).get("cross_field_rules", ())]
    if rules:
        schema.setdefault("allOf", []).extend(rules)


# What a request may ask to choose by: the trained algorithms (iama.objective.Algorithm), and a
# vote, which only serving offers (no first variation of a plurality is trained for).
ServedAlgorithm = Literal["bon", "soft_bon", "vote"]


def vote_rules(algorithm: str, budget: str) -> tuple[JSONSchema, ...]:
    """``vote`` with ``algorithm: "vote"`` and only with it; not with an ``"auto"`` budget or
    early rejection (:meth:`AdaptiveBudget._check_vote`)."""
    voting = present(algorithm, {"const": "vote"})
    return (
        when(voting, {"allOf": [present("vote", {"type": "object"}), absent("early_rejection")]}, absent("vote")),
        {"not": {"allOf": [voting, present(budget, {"const": "auto"})]}},
    )


def budget_rules(name: str) -> tuple[JSONSchema, ...]:
    """``name: "auto"`` needs ``target_score`` and excludes ``early_rejection``; without it,
    ``target_score`` and ``max_budget`` are refused (:meth:`AdaptiveBudget._check_budget_fields`)."""
    auto = present(name, {"const": "auto"})
    return (
        when(auto, {"allOf": [present("target_score", {"type": "number"}), absent("early_rejection")]}),
        {"anyOf": [auto, absent("target_score", "max_budget")]},
    )


class StrictRequest(BaseModel):
    """A request body part: unknown fields, NaN/inf and type coercion are refused. Rules across
    fields go in ``cross_field_rules`` (JSON Schema) beside the validator that enforces each."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True, json_schema_extra=_cross_field_schema)
    cross_field_rules: ClassVar[tuple[JSONSchema, ...]] = ()


_CONTENT_SCHEMA: JSONSchema = {  # what _text_parts accepts: a string, or OpenAI's text parts
    "anyOf": [
        {"type": "string"},
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                "required": ["type", "text"],
            },
        },
    ],
    "title": "Content",
}


class ChatMessage(BaseModel):
    """A chat turn; ``content`` may be a string or OpenAI's list of text parts (joined)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Annotated[str, WithJsonSchema(_CONTENT_SCHEMA)]

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


class JSONSchemaFormat(StrictRequest):
    """OpenAI's ``response_format.json_schema``: the schema every candidate must follow."""

    name: str = Field(default="response", min_length=1, max_length=64)
    description: str | None = Field(default=None, max_length=4096)
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(StrictRequest):
    """``text`` (unconstrained), ``json_object`` (any JSON object) or ``json_schema``: decoded
    under vLLM's structured outputs, so every one of the N candidates is valid and best-of-N
    chooses among valid answers."""

    cross_field_rules = (
        when(
            present("type", {"const": "json_schema"}), present("json_schema", {"type": "object"}), absent("json_schema")
        ),
    )

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = Field(
        default=None, description="required with type 'json_schema', and only then"
    )

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            if self.json_schema is None:
                raise PydanticCustomError("value_error", "json_schema is required with type 'json_schema'")
            raise PydanticCustomError("value_error", "json_schema only applies with type 'json_schema'")
        return self


class SamplingFields(StrictRequest):
    """Sampling of the N candidates (vLLM); ``max_tokens`` is also checked against settings."""

    temperature: float = Field(default=1.0, ge=0.0, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: StopString | list[StopString] | None = Field(default=None, max_length=4)
    stop_token_ids: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = Field(
        default=None,
        max_length=64,
        description="vLLM's extension: token ids that end a candidate as the EOS does (a model trained "
        "with `sampling.stop` stopped on tokens, not on text inside longer tokens)",
    )
    include_stop_str_in_output: bool = Field(
        default=False,
        description="vLLM's extension: keep the stop string or stop token that ended a candidate in its "
        "text (and in what the rewards score), as a model trained with stop tokens saw its answers",
    )
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    response_format: ResponseFormat | None = None
    ignore_eos: bool = Field(
        default=False, description="vLLM's extension: generate max_tokens whatever the model's end token (load tests)"
    )


Checkpoints = list[Annotated[int, Field(ge=1, le=2**31 - 1)] | Annotated[float, Field(gt=0.0, lt=1.0)]]


class EarlyRejection(StrictRequest):
    """Stop the weakest candidates early (speculative rejection): at each checkpoint (tokens
    generated), score the running candidates' partial texts with the request's rewards that can
    judge partial text, and keep the best ``keep`` fraction; the rest are aborted inside vLLM.
    Checkpoints are token counts, or fractions of ``max_tokens`` (all in (0, 1)), which keep
    their meaning whatever length a request asks for. Left out, checkpoints and keep are the
    server's (``early_rejection_checkpoints``, ``early_rejection_keep``): ``{}`` asks for its
    defaults. ``oversample`` starts more than N candidates, as many as fit in plain BoN_N's
    token cost (N × max_tokens, counting every candidate to its checkpoint)."""

    checkpoints: Checkpoints | None = Field(
        default=None,
        min_length=1,
        max_length=8,
        description="all token counts or all fractions of max_tokens, strictly increasing",
    )
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


def _budget_value(v: Any) -> Any:
    """An integer budget or 'auto', with one message for anything else (not one per union member)."""
    if v is None or v == "auto" or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    raise PydanticCustomError("value_error", "must be a whole number from 1 to {max} or 'auto'", {"max": MAX_N})


Budget = Annotated[Annotated[int, Field(ge=1, le=MAX_N)] | Literal["auto"] | None, BeforeValidator(_budget_value)]


class VoteRequest(StrictRequest):
    """``algorithm: "vote"``: each candidate's answer (give exactly one way to extract it), the most
    frequent answer wins and its best-scoring candidate is returned (``iama.voting``)."""

    cross_field_rules = (
        {"oneOf": [present("regex", {"type": "string"}), present("json_path", {"type": "string"}),
                   present("reward", {"type": "string"})]},
    )  # fmt: skip

    regex: str | None = Field(
        default=None, min_length=1, max_length=256, description="the first match (its first group, if any)"
    )
    json_path: str | None = Field(
        default=None, max_length=256, description='dotted path into the answer parsed as JSON ("" the whole)'
    )
    reward: str | None = Field(
        default=None, max_length=128, description="a scalar reward's value (e.g. the number a `number` reward reads)"
    )
    weighted: bool = Field(
        default=False, description="each vote counts its soft-BoN probability (scores at alignment_temperature)"
    )

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                regex.compile(v)
            except regex.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _one_way(self) -> VoteRequest:
        if sum(x is not None for x in (self.regex, self.json_path, self.reward)) != 1:
            raise ValueError("give exactly one of regex, json_path or reward")
        return self


class VoteReport(BaseModel):
    """What a vote decided: the winning answer (null: no candidate gave one, and the best-scoring
    one was returned) and the votes of every answer, most first."""

    answer: str | None
    counts: dict[str, float]


class AdaptiveBudget(StrictRequest):
    """How the candidates are searched and chosen. ``budget: "auto"``: sample in waves (2, 4, 8,
    … up to ``max_budget``) and stop as soon as an eligible candidate's weighted score reaches
    ``target_score``. ``prefer_finished``: a candidate cut at ``max_tokens`` is chosen only when
    no finished one is (``iama_server.eligibility``)."""

    prefer_finished: bool | None = Field(
        default=None,
        description="rank candidates cut at max_tokens after finished ones (default: on with "
        "response_format, whose cut answers do not parse; off otherwise)",
    )

    target_score: float | None = Field(
        default=None, ge=-1e6, le=1e6, description="for budget 'auto' (required with it, refused without)"
    )
    max_budget: int | None = Field(default=None, ge=1, le=MAX_N, description="for budget 'auto' (refused without it)")
    early_rejection: EarlyRejection | None = Field(default=None, description="not with budget 'auto'")
    vote: VoteRequest | None = Field(
        default=None, description="with algorithm 'vote' (required with it, refused without)"
    )

    def _check_vote(self, algorithm: str, budget: object, algorithm_name: str, budget_name: str) -> None:
        voting = algorithm == "vote"
        if voting != (self.vote is not None):
            message = "vote is required with {a}: 'vote'" if voting else "vote only applies with {a}: 'vote'"
            raise PydanticCustomError("value_error", message, {"a": algorithm_name})
        if voting and (budget == "auto" or self.early_rejection is not None):
            what = f"{budget_name}: 'auto'" if budget == "auto" else "early_rejection"
            raise PydanticCustomError(
                "value_error", "{a}: 'vote' and {what} cannot be combined", {"a": algorithm_name, "what": what}
            )

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

MAX_RUBRICS = 16  # the schema's bound; the server's own (max_rubrics) is at most this
MAX_RUBRIC_CHARS = 4000  # iama.rewards.judge's bound; the server's (max_rubric_chars) is at most this
RubricName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
RubricText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_RUBRIC_CHARS)]


class RubricFields(StrictRequest):
    """Preferences written in the request: each rubric is a reward scored by the served model
    as a judge (``iama.judging``: the expected 0-9 rating, in [0, 1]), weighted in
    ``reward_weights`` under its name like any installed reward."""

    rubrics: dict[RubricName, RubricText] | None = Field(
        default=None,
        max_length=MAX_RUBRICS,
        description='name -> rubric text, e.g. {"kid": "answers as you would to a ten-year-old"}; '
        "each name must be weighted in reward_weights and must not be an installed reward's",
    )


class RewardScore(BaseModel):
    raw: float
    normalized: float


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
    total_tokens: int = Field(description="prompt, completion and judge tokens")
    judge_tokens: int = Field(
        default=0, description="prompt tokens the served model read to judge rubric rewards (one step each)"
    )


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


class UsageTotals(BaseModel):
    group: str | None = Field(description="the key, model, route or UTC day (YYYY-MM-DD); null without group_by")
    requests: int
    prompt_tokens: int
    generated_tokens: int = Field(description="every candidate's tokens, the discarded ones too")
    judge_tokens: int
    candidates: int = Field(description="candidates started")


ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class AdapterLoad(BaseModel):
    """``POST /v1/adapters`` (admin keys only): serve an IAMA adapter on the base from now on."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=ADAPTER_NAME_PATTERN, description="the `model` requests name it by: letters, digits, '.', '_', '-'"
    )
    path: str = Field(
        min_length=1,
        max_length=4096,
        description="the adapter's directory on the server (adapter_config.json, weights, iama.json), trained on "
        "this server's base",
    )


class AdapterDeleted(BaseModel):
    """``DELETE /v1/adapters/{name}``: gone once the requests that ran through it finished."""

    id: str
    object: Literal["model"] = "model"
    deleted: bool


class UsageReport(BaseModel):
    """``GET /v1/usage``: sums over the usage rows (admin keys only)."""

    object: Literal["usage"] = "usage"
    group_by: Literal["key", "model", "route", "day"] | None
    data: list[UsageTotals]
