"""A request body becomes an :class:`AlignmentCall`: the one validated form of a request,
whatever endpoint it came from. Every 4xx about a body is raised here, before admission, so
nothing below has to check a request again.

``/v1/align`` gives one call; the OpenAI routes one per prompt. A call carries what execution
needs and nothing it must recompute: the model it asked for (``adapters.ServedModel``: the base
or an adapter, with that model's rewards), the encoded prompt, the sampling (with the adapter
the engine runs it through), the validated weights, the resolved early-rejection plan
(checkpoints in tokens, keep, candidates to start), its :attr:`AlignmentCall.mode` and its
:attr:`AlignmentCall.cost` for admission.
"""

from __future__ import annotations

import functools
import itertools
import uuid
from dataclasses import dataclass, field, replace
from typing import Literal

from iama.algorithms import checkpoints_in_tokens, oversampled_budget
from iama.rewards import Prompt, WeightError, validate_weights
from iama.seeds import candidate_base_seed
from iama_server.adapters import ServedModel, ServedModels
from iama_server.admission import request_cost
from iama_server.engine import GenerationEngine, Sampling, StructuredOutput
from iama_server.errors import APIError, ErrorCode
from iama_server.judging import JUDGE_TOKEN_MARGIN, EngineJudge
from iama_server.keys import ANONYMOUS, KeyPolicy
from iama_server.lifecycle import Lifecycle
from iama_server.prompts import PromptEncoder
from iama_server.schemas import (
    MAX_N,
    AlignRequest,
    ChatCompletionRequest,
    CompletionRequest,
    EarlyRejection,
    SamplingFields,
    ServedAlgorithm,
    VoteRequest,
)
from iama_server.settings import ServerSettings

Mode = Literal["sample", "bon", "early_rejection", "adaptive"]


@dataclass(frozen=True)
class EarlyRejectionPlan:
    """Early rejection resolved against the server's defaults and the request's ``max_tokens``."""

    checkpoints: tuple[int, ...]  # tokens generated, strictly increasing
    keep: float  # fraction of the running candidates kept at each checkpoint
    candidates: int  # how many start: N, or more with oversample


@dataclass(frozen=True)
class AlignmentCall:
    """A validated request, whatever endpoint it came from."""

    prompt_ids: list[int]
    prompt: Prompt  # what rewards score against: the conversation, or the raw prompt text
    weights: dict[str, float] | None  # validated; None: plain generation, nothing scored
    budget: int  # N candidates sampled (with budget "auto": the most the search may sample)
    algorithm: ServedAlgorithm
    tau: float
    sampling: Sampling  # its adapter: the model's (None for the base)
    request_id: str  # the client's X-Request-Id, or one made up for it
    model: ServedModel  # what the request's `model` selected: its rewards score the candidates
    normalize: bool = True
    n_returned: int = 1  # OpenAI's n: how many of the N come back, the chosen one first
    early_rejection: EarlyRejectionPlan | None = None  # stop weak candidates at checkpoints
    prefer_finished: bool = False  # a candidate cut at max_tokens only when no finished one is
    vote: VoteRequest | None = None  # algorithm "vote": how each candidate's answer is read
    key: KeyPolicy = ANONYMOUS  # whose request: its limits, priority and usage
    rubrics: dict[str, str] = field(default_factory=dict)  # weighted rewards the served model judges: name -> rubric
    judge_prompt_tokens: int = 0  # the rubrics' judge prompts without the answer, summed (for the cost)
    target_score: float | None = None  # budget "auto": stop sampling once a candidate reaches it
    echo: str | None = None  # completions' echo: the prompt's text, returned before the completion

    @property
    def mode(self) -> Mode:
        """How the candidates are generated: ``sample`` (nothing to score: plain generation of
        the N), ``bon`` (one engine request with n = N, then selection), or one of the
        searches (``searches.py``)."""
        if self.weights is None:
            return "sample"
        if self.early_rejection is not None:
            return "early_rejection"
        if self.target_score is not None:
            return "adaptive"
        return "bon"

    @functools.cached_property
    def cost(self) -> int:
        """What the call can hold of the engine at most (``admission.request_cost``, plus each
        rubric's judge prompt for each candidate): computed once, when the builder checks it
        against the capacity, then read by admission."""
        judging = self.budget * (
            self.judge_prompt_tokens + len(self.rubrics) * (self.sampling.max_tokens + JUDGE_TOKEN_MARGIN)
        )
        return request_cost(len(self.prompt_ids), self.budget, self.sampling.max_tokens) + judging

    def engine_request_id(self) -> str:
        """Unique inside vLLM even when a client reuses its X-Request-Id concurrently."""
        return f"{self.request_id}-{uuid.uuid4().hex[:8]}"


def total_cost(calls: list[AlignmentCall]) -> int:
    """What the calls of one HTTP request hold of the engine at most, all prompts together."""
    return sum(c.cost for c in calls)


class CallBuilder:
    """Request bodies → :class:`AlignmentCall` s, raising :class:`APIError` for every problem
    with a body: a model not served (or not this key's), the server not ready, weights (against
    the requested model's rewards), budgets, lengths, greedy best-of-N, early-rejection
    checkpoints that collide, a cost over the whole capacity."""

    def __init__(
        self, engine: GenerationEngine, models: ServedModels, settings: ServerSettings, lifecycle: Lifecycle
    ) -> None:
        self.engine, self.models, self.settings = engine, models, settings
        self.prompts = PromptEncoder(engine, settings)
        self.judge = EngineJudge(engine)
        self.lifecycle = lifecycle

    def align(self, body: AlignRequest, request_id: str, key: KeyPolicy = ANONYMOUS) -> AlignmentCall:
        """``/v1/align``: weights are required (or the model's default), budget defaults."""
        model = self._check_ready_and_model(body.model, key)
        ids, text = self.prompts.encode(body.prompt, body.messages, raw=body.raw_prompt)
        call = self._call(
            body,
            model,
            ids,
            text,
            request_id,
            weights=self._weights(model, body.reward_weights, required=True, rubrics=body.rubrics),
            budget=self._requested_budget(body.budget, "budget", body.max_budget),
            algorithm=body.algorithm,
            normalize=body.normalize,
            key=key,
        )
        self._check_cost([call], "max_budget" if body.budget == "auto" else "budget")
        return call

    def openai(
        self, body: CompletionRequest | ChatCompletionRequest, request_id: str, key: KeyPolicy = ANONYMOUS
    ) -> list[AlignmentCall]:
        """OpenAI routes, one call per prompt: aligned when ``best_of`` or ``reward_weights`` is
        given, plain generation of ``n`` samples otherwise."""
        model = self._check_ready_and_model(body.model, key)
        if isinstance(body, ChatCompletionRequest):
            encoded = [self.prompts.encode(None, body.messages, raw=False)]
            logprobs = (body.top_logprobs or 0) if body.logprobs else None
            prompt_logprobs, echo = None, False
        else:
            encoded = [
                self.prompts.encode_ids(prompt)
                if isinstance(prompt, list)
                else self.prompts.encode(prompt, None, raw=True)
                for prompt in body.prompts
            ]
            logprobs, echo = body.logprobs, body.echo
            prompt_logprobs = logprobs if echo else None
        aligned = body.best_of is not None or body.reward_weights is not None
        if body.best_of is not None:
            budget = self._requested_budget(body.best_of, "best_of", body.max_budget)
        else:
            budget = self._budget(body.n, "n")
        searching = body.best_of == "auto" or body.early_rejection is not None
        if body.rubrics and not aligned:
            raise APIError(400, "rubrics are scored only with reward_weights that weight them", "rubrics")
        required = budget > body.n or searching
        weights = self._weights(model, body.reward_weights, required, body.rubrics) if aligned else None
        calls = [
            self._call(
                body,
                model,
                ids,
                text,
                request_id,
                logprobs=logprobs,
                prompt_logprobs=prompt_logprobs,
                weights=weights,
                budget=budget,
                algorithm=body.alignment,
                n_returned=body.n,
                echo=text if echo and isinstance(text, str) else None,
                key=key,
            )
            for ids, text in encoded
        ]
        budget_field = "n" if body.best_of is None else ("max_budget" if body.best_of == "auto" else "best_of")
        self._check_cost(calls, budget_field)
        return calls

    def default_weights(self, model: ServedModel) -> dict[str, float] | None:
        """The weights of a request that gives none. The base: the server's
        ``default_reward_weights``, else its card's first task's. An adapter: its card's first,
        as it was meta-aligned for them, else the server's."""
        server = dict(self.settings.default_reward_weights) if self.settings.default_reward_weights else None
        tasks = model.card.objective.tasks if model.card is not None and model.card.objective is not None else []
        from_card = (dict(tasks[0].weights) or None) if tasks else None
        if model.adapter is None:
            return server or from_card
        return from_card or server

    # ------------------------------------------------------------------ the fields
    def _call(
        self,
        body: AlignRequest | CompletionRequest | ChatCompletionRequest,
        model: ServedModel,
        ids: list[int],
        text: Prompt,
        request_id: str,
        *,
        weights: dict[str, float] | None,
        budget: int,
        algorithm: ServedAlgorithm,
        normalize: bool = True,
        n_returned: int = 1,
        echo: str | None = None,
        logprobs: int | None = None,
        prompt_logprobs: int | None = None,
        key: KeyPolicy = ANONYMOUS,
    ) -> AlignmentCall:
        """The fields every route fills the same way; the route gives weights, budget, algorithm
        (and the OpenAI routes n, echo and the log-probs asked for)."""
        sampling = replace(
            self._sampling(body, len(ids), logprobs, prompt_logprobs),
            priority=key.scheduling_priority,
            adapter=model.adapter,
        )
        rubrics = self._rubrics(model, body.rubrics, weights)
        judge_prefix = {n: self.judge.prefix_tokens(r, text) for n, r in rubrics.items()}
        self._check_judge_context(judge_prefix, sampling.max_tokens, body.rubrics or {})
        er = body.early_rejection
        plan = None if er is None else self._early_rejection_plan(er, budget, sampling.max_tokens)
        if sampling.temperature == 0 and budget > 1:
            raise APIError(
                400,
                f"temperature 0 (greedy) makes all {budget} candidates the same text; "
                "sample with temperature > 0, or ask for one candidate",
                "temperature",
            )
        return AlignmentCall(
            prompt_ids=ids,
            prompt=text,
            weights=weights,
            budget=budget,
            algorithm=algorithm,
            tau=body.alignment_temperature or self.settings.default_alignment_temperature,
            sampling=sampling,
            request_id=request_id,
            model=model,
            normalize=normalize,
            n_returned=n_returned,
            early_rejection=plan,
            target_score=body.target_score,
            echo=echo,
            prefer_finished=(
                body.prefer_finished if body.prefer_finished is not None else sampling.structured is not None
            ),
            vote=self._vote(model, body.vote),
            rubrics=rubrics,
            judge_prompt_tokens=sum(judge_prefix.values()),
            key=key,
        )

    def _rubrics(
        self, model: ServedModel, given: dict[str, str] | None, weights: dict[str, float] | None
    ) -> dict[str, str]:
        """The weighted rewards the served model judges: the request's rubrics (each weighted,
        none named like an installed reward, within the server's limits) and the config's
        ``judge`` rewards without a model or url."""
        given = given or {}
        if len(given) > self.settings.max_rubrics:
            raise APIError(
                400, f"at most {self.settings.max_rubrics} rubrics per request (this server's max_rubrics)", "rubrics"
            )
        for name, text in given.items():
            where = f"rubrics.{name}"
            if name in model.rewards.specs:
                raise APIError(400, f"{name!r} is an installed reward's name; give the rubric another name", where)
            if not text.strip():
                raise APIError(400, "a rubric must say something", where)
            if len(text) > self.settings.max_rubric_chars:
                limit = self.settings.max_rubric_chars
                raise APIError(400, f"rubric is {len(text)} characters; this server allows {limit}", where)
            if weights is None or name not in weights:
                raise APIError(400, f"weight the rubric in reward_weights ({{{name!r}: 1.0}})", where)
        weighted = weights or {}
        configured = {n: r for n, r in model.rewards.engine_rubrics().items() if n in weighted}
        return {**configured, **given}  # a weight of 0 is scored and shown, as for any reward

    def _check_judge_context(self, prefix: dict[str, int], max_tokens: int, given: dict[str, str]) -> None:
        """Each judge prompt must fit the model's context with the longest answer in it."""
        for name, tokens in prefix.items():
            need = tokens + max_tokens + JUDGE_TOKEN_MARGIN
            if need > self.engine.max_model_len:
                raise APIError(
                    400,
                    f"judging with rubric {name!r} needs {need} tokens of context (its prompt {tokens} + "
                    f"max_tokens {max_tokens}); the model has {self.engine.max_model_len}: shorten the rubric, "
                    "the prompt or max_tokens",
                    f"rubrics.{name}" if name in given else f"reward_weights.{name}",
                )

    def _vote(self, model: ServedModel, vote: VoteRequest | None) -> VoteRequest | None:
        """A vote on a reward's value needs a reward that reads one number (a scalar reward)."""
        if vote is not None and vote.reward is not None and vote.reward not in model.rewards.scalar_rewards():
            scalars = sorted(model.rewards.scalar_rewards())
            raise APIError(400, f"vote.reward must be a reward that reads one value: one of {scalars}", "vote.reward")
        return vote

    def _early_rejection_plan(self, er: EarlyRejection, budget: int, max_tokens: int) -> EarlyRejectionPlan:
        """The server's defaults for what the request left out, checkpoints in tokens, and the
        number of candidates to start (N, or with ``oversample`` what N × max_tokens allows)."""
        given = er.checkpoints if er.checkpoints is not None else self.settings.early_rejection_checkpoints
        tokens = checkpoints_in_tokens(given, max_tokens)
        if any(b <= a for a, b in itertools.pairwise(tokens)):
            raise APIError(
                400,
                f"checkpoints {given} of max_tokens {max_tokens} are {tokens} tokens: "
                "they must still increase strictly",
                "early_rejection.checkpoints",
            )
        keep = er.keep if er.keep is not None else self.settings.early_rejection_keep
        start = oversampled_budget(budget, tokens, keep, max_tokens, MAX_N) if er.oversample else budget
        return EarlyRejectionPlan(tuple(tokens), keep, start)

    def _check_cost(self, calls: list[AlignmentCall], budget_field: str) -> None:
        """A request that could never run (it costs more than the whole capacity) is a 400 now,
        not a wait that never ends; one its key may never make (over its ``max_budget``,
        ``max_tokens``, or a token window it could never fit) a 403 naming the field."""
        self._check_key(calls, budget_field)
        cost, capacity = total_cost(calls), self.settings.effective_token_capacity
        if cost > capacity:
            c = calls[0]
            judged = f" + {c.budget} × {len(c.rubrics)} judge prompt(s) each holding an answer" if c.rubrics else ""
            raise APIError(
                400,
                f"this request needs {cost} tokens of capacity ({len(calls)} prompt(s) × (prompt tokens + "
                f"{c.budget} candidates × max_tokens {c.sampling.max_tokens}{judged})); the server's capacity is "
                f"{capacity}: lower {budget_field}, max_tokens or the number of prompts",
                budget_field,
            )

    def _check_key(self, calls: list[AlignmentCall], budget_field: str) -> None:
        key, c = calls[0].key, calls[0]
        limits, cost = key.limits, total_cost(calls)

        def refuse(message: str, field: str) -> APIError:
            return APIError(403, f"key {key.name!r}: {message}", field, ErrorCode.KEY_LIMIT)

        if limits.max_budget is not None and c.budget > limits.max_budget:
            raise refuse(f"{budget_field} {c.budget} is over this key's max_budget {limits.max_budget}", budget_field)
        if limits.max_tokens is not None and c.sampling.max_tokens > limits.max_tokens:
            raise refuse(
                f"max_tokens {c.sampling.max_tokens} is over this key's max_tokens {limits.max_tokens}", "max_tokens"
            )
        for window in ("tokens_per_minute", "tokens_per_day"):
            allowed = getattr(limits, window)
            if allowed is not None and cost > allowed:
                raise refuse(
                    f"this request may use {cost} tokens, more than this key's {window} of {allowed}: it can "
                    f"never run; lower {budget_field} or max_tokens",
                    budget_field,
                )

    def served_model(self, name: str | None, key: KeyPolicy) -> ServedModel:
        """The model ``name`` picks (the base, or an adapter by its name; None: the default), once
        ``key`` may call it (a key's ``models`` lists base and adapter names alike): a 403 first,
        so a key restricted to its own models learns nothing of the others, then a 404."""
        asked = name or self.models.default
        if not key.allows(asked):
            raise APIError(403, f"key {key.name!r} may not call model {asked!r}", "model", ErrorCode.MODEL_NOT_ALLOWED)
        return self.models.get(name)

    def callable_models(self, key: KeyPolicy) -> list[ServedModel]:
        """The models :meth:`served_model` lets ``key`` call, base first (``/v1/models``): the base
        when the key names it or one of its aliases, then each adapter the key names."""
        served = self.models
        base = [served.base] if any(key.allows(n) for n in (served.base.name, *served.aliases)) else []
        return base + [m for m in served.adapters if key.allows(m.name)]

    def _check_ready_and_model(self, name: str | None, key: KeyPolicy) -> ServedModel:
        """The model the request names (:meth:`served_model`), once the server is ready."""
        model = self.served_model(name, key)
        if not self.lifecycle.ready:  # starting (no tokenizer yet, rewards cold) or failed
            message = f"server is {self.lifecycle.phase.value}" + (
                f": {self.lifecycle.detail}" if self.lifecycle.detail else ""
            )
            raise APIError(503, message, code=ErrorCode.NOT_READY, headers={"Retry-After": "5"})
        return model

    def _weights(
        self,
        model: ServedModel,
        weights: dict[str, float] | None,
        required: bool,
        rubrics: dict[str, str] | None = None,
    ) -> dict[str, float] | None:
        if weights is None:
            weights = self.default_weights(model)
            if weights is None:
                if required:
                    raise APIError(400, "reward_weights is required (this server has no default)", "reward_weights")
                return None
        try:
            return validate_weights(weights, [*model.rewards.names, *(rubrics or {})])
        except WeightError as exc:
            raise APIError(400, str(exc), exc.field, ErrorCode.INVALID_REWARD_WEIGHTS) from None

    def _requested_budget(self, budget: int | Literal["auto"] | None, param: str, max_budget: int | None) -> int:
        """N: the request's, or with "auto" the most the search may spend."""
        if budget == "auto":
            return self._budget(max_budget or self.settings.max_budget, "max_budget")
        return self._budget(budget, param)

    def _budget(self, budget: int | None, param: str) -> int:
        b = self.settings.default_budget if budget is None else budget
        if not 1 <= b <= self.settings.max_budget:
            raise APIError(400, f"{param} must be between 1 and {self.settings.max_budget}, got {b}", param)
        return b

    def _sampling(
        self, fields: SamplingFields, prompt_len: int, logprobs: int | None = None, prompt_logprobs: int | None = None
    ) -> Sampling:
        mt = self.settings.default_max_tokens if fields.max_tokens is None else fields.max_tokens
        if mt > self.settings.max_tokens:
            raise APIError(400, f"max_tokens must be <= {self.settings.max_tokens}, got {mt}", "max_tokens")
        room = self.engine.max_model_len - prompt_len
        if room < 1:
            raise APIError(400, "prompt leaves no room for a completion in the model's context", "prompt")
        stop = [fields.stop] if isinstance(fields.stop, str) else fields.stop
        structured = None
        fmt = fields.response_format
        if fmt is not None and fmt.type != "text":
            structured = StructuredOutput(fmt.json_schema.schema_ if fmt.json_schema is not None else None)
        return Sampling(
            fields.temperature,
            fields.top_p,
            min(mt, room),
            None if fields.seed is None else candidate_base_seed(fields.seed),  # iama/seeds.py: why
            stop,
            fields.presence_penalty,
            fields.frequency_penalty,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            structured=structured,
            ignore_eos=fields.ignore_eos,
            stop_token_ids=fields.stop_token_ids,
            include_stop_str_in_output=fields.include_stop_str_in_output,
        )
