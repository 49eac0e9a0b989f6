"""The alignment flow shared by ``/v1/align`` and the OpenAI endpoints.

validate → one vLLM request with n = N → score all candidates (batched) → normalise + weight →
select (argmax for BoN, sample ∝ exp(score/τ) for soft BoN) → result.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from iama.algorithms import selection_kl_bound, soft_best_of_n_probabilities
from iama.modelcard import ModelCard
from iama.rewards import RewardSet, WeightError, weighted_score
from iama.rewards.normalization import normalize
from iama_server.engine import Engine, GenerationResult
from iama_server.errors import APIError
from iama_server.metrics import Metrics
from iama_server.schemas import Algorithm, ChatMessage, RewardScore, SamplingFields
from iama_server.scoring import BatchedScorer
from iama_server.settings import ServerSettings


@dataclass
class AlignmentCall:
    """A validated request, whatever endpoint it came from."""

    prompt_ids: list[int]
    prompt_text: str
    weights: dict[str, float] | None
    budget: int
    algorithm: Algorithm
    tau: float
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None
    stop: list[str] | None
    normalize: bool = True
    keep: int = 1  # OpenAI's n: how many of the budget to return


@dataclass
class Outcome:
    call: AlignmentCall
    generation: GenerationResult
    raw: dict[str, np.ndarray]
    normalized: dict[str, np.ndarray]
    weighted: np.ndarray | None
    chosen: list[int]  # indices into candidates, best/selected first
    generation_s: float
    scoring_s: float
    queue_s: float = 0.0

    def scores_of(self, i: int) -> dict[str, RewardScore]:
        return {k: RewardScore(raw=float(v[i]), normalized=float(self.normalized[k][i])) for k, v in self.raw.items()}

    @property
    def kl_bound(self) -> float:
        return selection_kl_bound(self.call.algorithm, self.call.budget) if self.weighted is not None else 0.0

    @property
    def completion_tokens(self) -> int:
        return sum(c.token_count for c in self.generation.candidates)


class AlignmentService:
    def __init__(
        self,
        engine: Engine,
        rewards: RewardSet,
        scorer: BatchedScorer,
        settings: ServerSettings,
        metrics: Metrics,
        card: ModelCard | None,
    ) -> None:
        self.engine, self.rewards, self.scorer = engine, rewards, scorer
        self.settings, self.metrics, self.card = settings, metrics, card

    # ------------------------------------------------------------------ validation
    def default_weights(self) -> dict[str, float] | None:
        if self.settings.default_reward_weights:
            return dict(self.settings.default_reward_weights)
        if self.card and self.card.objective and self.card.objective.tasks:
            return dict(self.card.objective.tasks[0].weights) or None
        return None

    def resolve_weights(self, weights: dict[str, float] | None, required: bool) -> dict[str, float] | None:
        if weights is None:
            weights = self.default_weights()
            if weights is None:
                if required:
                    raise APIError(400, "reward_weights is required (this server has no default)", "reward_weights")
                return None
        try:
            return self.rewards.validate_weights(weights)
        except WeightError as exc:
            raise APIError(400, str(exc), exc.field, "invalid_reward_weights") from None

    def resolve_budget(self, budget: int | None, param: str) -> int:
        b = self.settings.default_budget if budget is None else budget
        if b < 1 or b > self.settings.max_budget:
            raise APIError(400, f"{param} must be between 1 and {self.settings.max_budget}, got {b}", param)
        return min(b, self.settings.max_budget)

    def resolve_max_tokens(self, max_tokens: int | None, prompt_len: int, param: str = "max_tokens") -> int:
        mt = self.settings.default_max_tokens if max_tokens is None else max_tokens
        if mt > self.settings.max_tokens:
            raise APIError(400, f"{param} must be <= {self.settings.max_tokens}, got {mt}", param)
        room = self.engine.max_model_len - prompt_len
        if room < 1:
            raise APIError(400, "prompt leaves no room for a completion in the model's context", "prompt")
        return min(mt, room)

    def encode_prompt(
        self, prompt: str | None, messages: list[ChatMessage] | None, raw: bool
    ) -> tuple[list[int], str, str]:
        """Token ids, the text rewards see as 'the prompt', and the param name for errors."""
        if messages is not None:
            if not self.engine.has_chat_template():
                raise APIError(400, "this model has no chat template; send 'prompt'", "messages")
            msgs = [{"role": m.role, "content": m.content} for m in messages]
            ids, param = self.engine.encode_chat(msgs), "messages"
            users = [m.content for m in messages if m.role == "user"]
            text = users[-1] if users else messages[-1].content
        else:
            assert prompt is not None
            if not prompt:
                raise APIError(400, "prompt must not be empty", "prompt")
            if raw or not self.engine.has_chat_template():
                ids = self.engine.encode_text(prompt)
            else:
                ids = self.engine.encode_chat([{"role": "user", "content": prompt}])
            text, param = prompt, "prompt"
        if len(ids) > self.settings.max_prompt_tokens:
            raise APIError(
                400,
                f"{param} is {len(ids)} tokens; the limit is {self.settings.max_prompt_tokens}",
                param,
                "prompt_too_long",
            )
        return ids, text, param

    @staticmethod
    def stops(stop: str | list[str] | None) -> list[str] | None:
        if stop is None:
            return None
        return [stop] if isinstance(stop, str) else list(stop)

    def make_call(
        self,
        ids: list[int],
        prompt_text: str,
        sampling: SamplingFields,
        *,
        weights: dict[str, float] | None,
        budget: int,
        algorithm: Algorithm,
        tau: float | None,
        normalize: bool = True,
        keep: int = 1,
    ) -> AlignmentCall:
        """The validated call, with the sampling fields every endpoint shares."""
        return AlignmentCall(
            prompt_ids=ids,
            prompt_text=prompt_text,
            weights=weights,
            budget=budget,
            algorithm=algorithm,
            tau=tau or self.settings.default_alignment_temperature,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=self.resolve_max_tokens(sampling.max_tokens, len(ids)),
            seed=sampling.seed,
            stop=self.stops(sampling.stop),
            normalize=normalize,
            keep=keep,
        )

    # ------------------------------------------------------------------ execution
    async def run(self, call: AlignmentCall) -> Outcome:
        self.metrics.budget.observe(call.budget)
        t0 = time.perf_counter()
        gen = await self.engine.generate(
            call.prompt_ids,
            n=call.budget,
            temperature=call.temperature,
            top_p=call.top_p,
            max_tokens=call.max_tokens,
            seed=call.seed,
            stop=call.stop,
            request_id=uuid.uuid4().hex,
        )
        t1 = time.perf_counter()
        self.metrics.generation.observe(t1 - t0)
        self.metrics.tokens.labels("prompt").inc(gen.prompt_tokens)
        self.metrics.tokens.labels("completion").inc(sum(c.token_count for c in gen.candidates))

        texts = [c.text for c in gen.candidates]
        raw: dict[str, np.ndarray] = {}
        normalized: dict[str, np.ndarray] = {}
        weighted: np.ndarray | None = None
        chosen = list(range(min(call.keep, len(texts))))
        if call.weights is not None:
            raw = await self.scorer.score([call.prompt_text] * len(texts), texts, list(call.weights))
            stats = self.rewards.stats if call.normalize else {}
            normalized = {k: normalize(v, stats.get(k)) for k, v in raw.items()}
            weighted = weighted_score(raw, call.weights, stats)
            chosen = self._select(weighted, call)
        t2 = time.perf_counter()
        self.metrics.scoring.observe(t2 - t1)
        return Outcome(call, gen, raw, normalized, weighted, chosen, t1 - t0, t2 - t1)

    @staticmethod
    def _select(weighted: np.ndarray, call: AlignmentCall) -> list[int]:
        k = min(call.keep, weighted.size)
        if call.algorithm == "bon":
            # Stable sort on the negated score: ties keep the lowest index, as best_of_n_select.
            return [int(i) for i in np.argsort(-weighted, kind="stable")[:k]]
        probs = soft_best_of_n_probabilities(weighted, call.tau)
        rng = np.random.default_rng(call.seed)
        nonzero = int(np.count_nonzero(probs))
        picks = rng.choice(weighted.size, size=min(k, nonzero), replace=False, p=probs)
        out = [int(i) for i in picks]
        if len(out) < k:  # fewer non-zero-probability candidates than asked: fill by score
            out += [int(i) for i in np.argsort(-weighted, kind="stable") if int(i) not in out][: k - len(out)]
        return out


Receive = Callable[[], Awaitable[dict[str, Any]]]
T = TypeVar("T")


async def wait_disconnect(receive: Receive) -> None:
    """Return when the ASGI client disconnects (the body has already been read)."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


async def guarded(coro: Coroutine[Any, Any, T], receive: Receive, timeout_s: float) -> T:
    """Run ``coro`` but cancel it (aborting vLLM) on client disconnect or timeout."""
    task = asyncio.ensure_future(coro)
    watcher = asyncio.ensure_future(wait_disconnect(receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    if watcher in done:
        raise ClientGone()
    raise APIError(504, f"request exceeded the server's {timeout_s:g} s timeout", code="timeout")


class ClientGone(Exception):
    """The client disconnected; its vLLM request was aborted and nobody reads the answer."""
