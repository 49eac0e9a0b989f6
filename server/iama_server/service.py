"""The alignment flow shared by ``/v1/align`` and the OpenAI endpoints.

validate (``align_call`` / ``openai_calls``: every 4xx about a body is raised there) → one vLLM
request with n = N → score all candidates (batched across requests) → normalise + weight
(:func:`iama.rewards.normalize_scores`, :func:`iama.rewards.weighted_sum`) → select
(:func:`iama.algorithms.select`) → :class:`Outcome`. Only this module talks to the engine and
the scorer; admission, timeouts and disconnects are the transport's (``admission.py``).
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from iama.algorithms import budget_waves, oversampled_budget, select, selection_kl_bound
from iama.modelcard import ModelCard
from iama.objective import Algorithm
from iama.rewards import Prompt, RewardSet, WeightError, normalize_scores, weighted_sum
from iama.seeds import candidate_base_seed
from iama_server.admission import request_cost
from iama_server.candidates import Checkpoint, Sink, adaptive_budget, early_rejection
from iama_server.engine import Delta, GenerationEngine, GenerationResult, InvalidEngineInput, Sampling, StructuredOutput
from iama_server.errors import APIError, ErrorCode
from iama_server.lifecycle import ENGINE_DIED, Lifecycle
from iama_server.metrics import Metrics
from iama_server.schemas import (
    MAX_N,
    AlignRequest,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EarlyRejection,
    SamplingFields,
    checkpoints_in_tokens,
)
from iama_server.scoring import BatchedScorer
from iama_server.settings import ServerSettings


@dataclass(frozen=True)
class AlignmentCall:
    """A validated request, whatever endpoint it came from."""

    prompt_ids: list[int]
    prompt: Prompt  # what rewards score against: the conversation, or the raw prompt text
    weights: dict[str, float] | None  # validated; None: plain generation, nothing scored
    budget: int  # N candidates sampled
    algorithm: Algorithm
    tau: float
    sampling: Sampling
    request_id: str  # the client's X-Request-Id, or one made up for it
    normalize: bool = True
    n_returned: int = 1  # OpenAI's n: how many of the N come back, the chosen one first
    early_rejection: EarlyRejection | None = None  # stop weak candidates at checkpoints
    candidates_started: int | None = None  # early rejection: N, or more with oversample
    target_score: float | None = None  # budget "auto": stop sampling once a candidate reaches it
    echo: str | None = None  # completions' echo: the prompt's text, returned before the completion

    def engine_request_id(self) -> str:
        """Unique inside vLLM even when a client reuses its X-Request-Id concurrently."""
        return f"{self.request_id}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Search:
    """What early rejection or an adaptive budget did, for the response and the metrics."""

    rejected_at: dict[int, int] = field(default_factory=dict)  # candidate -> tokens when stopped
    partial_scores: dict[int, float] = field(default_factory=dict)  # candidate -> its score then
    partial_raw: dict[int, dict[str, float]] = field(default_factory=dict)  # candidate -> judges' raw scores then
    checkpoints: list[Checkpoint] | None = None  # early rejection's decisions
    partial_rewards: list[str] = field(default_factory=list)  # the rewards that judged partial texts
    budget_spent: int | None = None  # budget "auto"
    raw: dict[str, np.ndarray] | None = None  # budget "auto": every candidate's scores, from the waves


@dataclass
class Outcome:
    call: AlignmentCall
    generation: GenerationResult
    raw: dict[str, np.ndarray]  # reward -> (N,) raw scores
    normalized: dict[str, np.ndarray]  # reward -> (N,) scores as weighted
    weighted: np.ndarray | None  # (N,) weighted normalised score; None when nothing was scored
    chosen: list[int]  # indices into candidates, chosen first
    generation_s: float
    scoring_s: float
    queue_s: float = 0.0
    search: Search = field(default_factory=lambda: Search())

    @property
    def kl_bound(self) -> float:
        """BoN's sharp bound holds for exact BoN; a candidate picked from at most N by any other
        rule (soft BoN, early rejection, an adaptive stop) has density ratio ≤ N: log N."""
        if self.weighted is None:
            return 0.0
        exact = self.call.early_rejection is None and self.call.target_score is None
        return selection_kl_bound(self.call.algorithm if exact else "soft_bon", self.call.budget)

    @property
    def completion_tokens(self) -> int:
        return sum(c.token_count for c in self.generation.candidates)


class AlignmentService:
    def __init__(
        self,
        engine: GenerationEngine,
        rewards: RewardSet,
        scorer: BatchedScorer,
        settings: ServerSettings,
        metrics: Metrics,
        card: ModelCard | None,
        model_names: tuple[str, ...],
        lifecycle: Lifecycle,
    ) -> None:
        self.engine, self.rewards, self.scorer = engine, rewards, scorer
        self.settings, self.metrics, self.card = settings, metrics, card
        self.model_names = model_names  # the served name first; any of them may be asked for
        self.lifecycle = lifecycle

    # ------------------------------------------------------------------ validation
    def align_call(self, body: AlignRequest, request_id: str) -> AlignmentCall:
        """``/v1/align``: weights are required (or the server's default), budget defaults."""
        self._check_ready_and_model(body.model)
        ids, text = self._encode(body.prompt, body.messages, raw=body.raw_prompt)
        call = self._call(
            body,
            ids,
            text,
            request_id,
            weights=self._weights(body.reward_weights, required=True),
            budget=self._requested_budget(body.budget, "budget", body.max_budget),
            algorithm=body.algorithm,
            normalize=body.normalize,
        )
        self._check_cost([call], "max_budget" if body.budget == "auto" else "budget")
        return call

    def openai_calls(self, body: CompletionRequest | ChatCompletionRequest, request_id: str) -> list[AlignmentCall]:
        """OpenAI routes, one call per prompt: aligned when ``best_of`` or ``reward_weights`` is
        given, plain generation of ``n`` samples otherwise."""
        self._check_ready_and_model(body.model)
        if isinstance(body, ChatCompletionRequest):
            encoded = [self._encode(None, body.messages, raw=False)]
            logprobs = (body.top_logprobs or 0) if body.logprobs else None
            prompt_logprobs, echo = None, False
        else:
            encoded = [
                self._encode_ids(prompt) if isinstance(prompt, list) else self._encode(prompt, None, raw=True)
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
        weights = self._weights(body.reward_weights, required=budget > body.n or searching) if aligned else None
        calls = [
            self._call(
                body,
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
            )
            for ids, text in encoded
        ]
        budget_field = "n" if body.best_of is None else ("max_budget" if body.best_of == "auto" else "best_of")
        self._check_cost(calls, budget_field)
        return calls

    def cost(self, calls: list[AlignmentCall]) -> int:
        """What the calls of one HTTP request hold of the engine at most (``admission.request_cost``)."""
        return sum(request_cost(len(c.prompt_ids), c.budget, c.sampling.max_tokens) for c in calls)

    def _check_cost(self, calls: list[AlignmentCall], budget_field: str) -> None:
        """A request that could never run (it costs more than the whole capacity) is a 400 now,
        not a wait that never ends."""
        cost, capacity = self.cost(calls), self.settings.effective_token_capacity
        if cost > capacity:
            c = calls[0]
            raise APIError(
                400,
                f"this request needs {cost} tokens of capacity ({len(calls)} prompt(s) × (prompt tokens + "
                f"{c.budget} candidates × max_tokens {c.sampling.max_tokens})); the server's capacity is "
                f"{capacity}: lower {budget_field}, max_tokens or the number of prompts",
                budget_field,
            )

    def _call(
        self,
        body: AlignRequest | CompletionRequest | ChatCompletionRequest,
        ids: list[int],
        text: Prompt,
        request_id: str,
        logprobs: int | None = None,
        prompt_logprobs: int | None = None,
        **route_fields: Any,
    ) -> AlignmentCall:
        """The fields every route fills the same way; the route gives weights, budget, algorithm
        (and the OpenAI routes the log-probs asked for)."""
        call = AlignmentCall(
            prompt_ids=ids,
            prompt=text,
            tau=body.alignment_temperature or self.settings.default_alignment_temperature,
            sampling=self._sampling(body, len(ids), logprobs, prompt_logprobs),
            request_id=request_id,
            early_rejection=body.early_rejection,
            target_score=body.target_score,
            **route_fields,
        )
        if call.early_rejection is not None:
            call = self._resolve_early_rejection(call, call.early_rejection)
        if call.sampling.temperature == 0 and call.budget > 1:
            raise APIError(
                400,
                f"temperature 0 (greedy) makes all {call.budget} candidates the same text; "
                "sample with temperature > 0, or ask for one candidate",
                "temperature",
            )
        return call

    def _resolve_early_rejection(self, call: AlignmentCall, er: EarlyRejection) -> AlignmentCall:
        """The server's defaults for what the request left out, checkpoints in tokens, and the
        number of candidates to start (N, or with ``oversample`` what N × max_tokens allows)."""
        max_tokens = call.sampling.max_tokens
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
        start = oversampled_budget(call.budget, tokens, keep, max_tokens, MAX_N) if er.oversample else call.budget
        resolved = er.model_copy(update={"checkpoints": tokens, "keep": keep})
        return replace(call, early_rejection=resolved, candidates_started=start)

    def default_weights(self) -> dict[str, float] | None:
        if self.settings.default_reward_weights:
            return dict(self.settings.default_reward_weights)
        if self.card and self.card.objective and self.card.objective.tasks:
            return dict(self.card.objective.tasks[0].weights) or None
        return None

    def _check_ready_and_model(self, model: str | None) -> None:
        if model is not None and model not in self.model_names:
            raise APIError(
                404,
                f"model {model!r} is not served here; use {self.model_names[0]!r}",
                "model",
                ErrorCode.MODEL_NOT_FOUND,
            )
        if not self.lifecycle.ready:  # starting (no tokenizer yet, rewards cold) or failed
            message = f"server is {self.lifecycle.phase.value}" + (
                f": {self.lifecycle.detail}" if self.lifecycle.detail else ""
            )
            raise APIError(503, message, code=ErrorCode.NOT_READY, headers={"Retry-After": "5"})

    def _weights(self, weights: dict[str, float] | None, required: bool) -> dict[str, float] | None:
        if weights is None:
            weights = self.default_weights()
            if weights is None:
                if required:
                    raise APIError(400, "reward_weights is required (this server has no default)", "reward_weights")
                return None
        try:
            return self.rewards.validate_weights(weights)
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
        )

    def _encode_ids(self, ids: list[int]) -> tuple[list[int], Prompt]:
        """A prompt given as token ids (evaluation harnesses send these): checked against the
        vocabulary; rewards see its decoded text."""
        vocab = self.engine.vocab_size
        bad = next((t for t in ids if t >= vocab), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is outside the model's vocabulary (size {vocab})", "prompt")
        self._check_prompt_length(len(ids), "prompt")
        return list(ids), self.engine.decode(ids)

    def _check_prompt_length(self, n: int, param: str) -> None:
        if n > self.settings.max_prompt_tokens:
            raise APIError(
                400,
                f"{param} is {n} tokens; the limit is {self.settings.max_prompt_tokens}",
                param,
                ErrorCode.PROMPT_TOO_LONG,
            )

    def _encode(self, prompt: str | None, messages: list[ChatMessage] | None, raw: bool) -> tuple[list[int], Prompt]:
        """Token ids, and the prompt as rewards see it (the conversation, or the prompt)."""
        text: Prompt
        if messages is not None:
            if not self.engine.has_chat_template():
                raise APIError(400, "this model has no chat template; send 'prompt'", "messages")
            msgs = [{"role": m.role, "content": m.content} for m in messages]
            ids, text, param = self.engine.encode_chat(msgs), msgs, "messages"
        else:
            assert prompt is not None  # the schemas require exactly one of prompt / messages
            if not prompt:
                raise APIError(400, "prompt must not be empty", "prompt")
            if raw or not self.engine.has_chat_template():
                ids = self.engine.encode_text(prompt)
            else:
                ids = self.engine.encode_chat([{"role": "user", "content": prompt}])
            text, param = prompt, "prompt"
        self._check_prompt_length(len(ids), param)
        return ids, text

    # ------------------------------------------------------------------ execution
    async def run(self, call: AlignmentCall, sink: Sink | None = None) -> Outcome:
        """``sink`` (early rejection only) receives the answer's text as it is generated, once a
        checkpoint has left one candidate (``candidates.early_rejection``)."""
        self.metrics.budget.observe(call.budget)
        t0 = time.perf_counter()
        search = Search()
        try:
            if call.early_rejection is not None and call.weights is not None:
                gen, search = await self._generate_with_early_rejection(call, sink)
            elif call.target_score is not None and call.weights is not None:
                gen, search = await self._generate_adaptively(call)
            else:
                gen = await self.engine.generate(call.prompt_ids, call.sampling, call.budget, call.engine_request_id())
        except InvalidEngineInput as exc:
            raise APIError(400, f"the engine refused the request: {exc}", exc.param) from None
        except Exception:
            if self.engine.ready:
                raise
            # vLLM's EngineDeadError: fatal for the process, and a 503 (retry elsewhere) for the client.
            self.lifecycle.fail(ENGINE_DIED)
            raise APIError(503, ENGINE_DIED, code=ErrorCode.NOT_READY, headers={"Retry-After": "5"}) from None
        t1 = time.perf_counter()
        self.metrics.generation.observe(t1 - t0)
        self.metrics.tokens.labels("prompt").inc(gen.prompt_tokens)
        self.metrics.tokens.labels("completion").inc(sum(c.token_count for c in gen.candidates))

        texts = [c.text for c in gen.candidates]
        raw: dict[str, np.ndarray] = {}
        normalized: dict[str, np.ndarray] = {}
        weighted: np.ndarray | None = None
        chosen = list(range(min(call.n_returned, len(texts))))
        if call.weights is not None:
            if search.raw is None:
                raw = await self._final_scores(call, texts, search)
            else:
                raw = search.raw  # the adaptive budget scored every whole candidate already
            normalized = normalize_scores(raw, self.rewards.stats if call.normalize else None)
            weighted = weighted_sum(normalized, call.weights)
            eligible = weighted.copy()
            eligible[list(search.rejected_at)] = np.nan  # a rejected candidate is never chosen
            k = min(call.n_returned, len(texts) - len(search.rejected_at))
            chosen = select(eligible, call.algorithm, k, call.tau, call.sampling.seed)
        t2 = time.perf_counter()
        self.metrics.scoring.observe(t2 - t1)
        return Outcome(call, gen, raw, normalized, weighted, chosen, t1 - t0, t2 - t1, search=search)

    async def _final_scores(self, call: AlignmentCall, texts: list[str], search: Search) -> dict[str, np.ndarray]:
        """Raw scores of the finished candidates; a candidate stopped by early rejection is not
        scored again: it keeps the judges' scores of the partial text that decided (NaN for the
        rewards that could not judge it, which are never shown for it)."""
        assert call.weights is not None
        names = list(call.weights)
        live = [i for i in range(len(texts)) if i not in search.rejected_at]
        if len(live) == len(texts):
            return await self.scorer.score([call.prompt] * len(texts), texts, names)
        scored = await self.scorer.score([call.prompt] * len(live), [texts[i] for i in live], names)
        raw = {n: np.full(len(texts), np.nan) for n in names}
        for n in names:
            raw[n][live] = scored[n]
        for i, by_name in search.partial_raw.items():
            for n, v in by_name.items():
                raw[n][i] = v
        return raw

    async def _weighted_scores(
        self, call: AlignmentCall, texts: list[str], names: list[str]
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Raw scores of ``texts`` over the rewards ``names`` (the scorer batches), and their
        weighted normalised score."""
        assert call.weights is not None
        raw = await self.scorer.score([call.prompt] * len(texts), texts, names)
        normalized = normalize_scores(raw, self.rewards.stats if call.normalize else None)
        return raw, weighted_sum(normalized, {n: call.weights[n] for n in names})

    async def _generate_with_early_rejection(
        self, call: AlignmentCall, sink: Sink | None = None
    ) -> tuple[GenerationResult, Search]:
        assert call.early_rejection is not None and call.weights is not None
        judges = [n for n in self.rewards.judging_partial_text(list(call.weights)) if call.weights[n] > 0]
        at_checkpoints: list[dict[str, np.ndarray]] = []  # the judges' raw scores, one entry per checkpoint

        async def score(texts: list[str]) -> np.ndarray:
            raw, weighted = await self._weighted_scores(call, texts, judges)
            at_checkpoints.append(raw)
            return weighted

        er = call.early_rejection
        run = await early_rejection(
            self.engine,
            call.prompt_ids,
            call.sampling,
            call.candidates_started or call.budget,
            call.engine_request_id(),
            er.in_tokens(call.sampling.max_tokens),  # already tokens: resolved in _call
            er.keep or 1.0,  # resolved in _call
            score if judges else None,
            sink if call.n_returned == 1 else None,
        )
        saved = sum(call.sampling.max_tokens - tokens for tokens in run.rejected_at.values())
        self.metrics.candidates_aborted.inc(len(run.rejected_at))
        self.metrics.tokens_saved.inc(saved)
        # each checkpoint scored its running candidates in index order: kept and rejected together
        partial_raw = {}
        for cp, raw in zip(run.checkpoints, at_checkpoints, strict=True):
            order = sorted(cp.kept + cp.rejected)
            for j in cp.rejected:
                partial_raw[j] = {n: float(raw[n][order.index(j)]) for n in judges}
        search = Search(
            rejected_at=run.rejected_at,
            partial_scores=run.partial_scores,
            partial_raw=partial_raw,
            checkpoints=run.checkpoints,
            partial_rewards=judges,
        )
        return run.result, search

    async def _generate_adaptively(self, call: AlignmentCall) -> tuple[GenerationResult, Search]:
        assert call.target_score is not None and call.weights is not None
        names = list(call.weights)
        waves: list[dict[str, np.ndarray]] = []  # raw scores of each wave's new candidates, in order

        async def score(texts: list[str]) -> np.ndarray:
            raw, weighted = await self._weighted_scores(call, texts, names)
            waves.append(raw)
            return weighted

        run = await adaptive_budget(
            self.engine,
            call.prompt_ids,
            call.sampling,
            budget_waves(call.budget),
            call.engine_request_id(),
            call.target_score,
            score,
        )
        spent = len(run.result.candidates)
        self.metrics.budget_spent.observe(spent)
        raw = {n: np.concatenate([w[n] for w in waves]) for n in names}
        return run.result, Search(budget_spent=spent, raw=raw)

    async def stream(self, call: AlignmentCall) -> AsyncIterator[Delta]:
        """Plain generation (nothing to score or select), token by token as vLLM produces it."""
        self.metrics.budget.observe(1)
        async for delta in self.engine.stream(call.prompt_ids, call.sampling, call.engine_request_id()):
            if delta.finish_reason is not None:
                self.metrics.tokens.labels("prompt").inc(delta.prompt_tokens)
                self.metrics.tokens.labels("completion").inc(delta.tokens)
            yield delta
