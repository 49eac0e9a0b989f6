"""Everything a request needs, built once per app (no module globals: several apps coexist).

Which model and rewards are served is decided here: a trained checkpoint brings its rewards
and normalisation statistics in ``iama.json``; a plain model gets the default reward set;
the settings' ``rewards`` add to or override either.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from iama.modelcard import ModelCard, load_model_card
from iama.models import DEFAULT_MODEL_ALIAS, DEFAULT_MODEL_NAME, resolve_model
from iama.rewards import DEFAULT_REWARDS, RewardSet, RewardSpec, bind_tokenizer
from iama_server.accounting import Accounting
from iama_server.admission import Admission
from iama_server.calls import CallBuilder
from iama_server.engine import GenerationEngine
from iama_server.keys import KeyRing
from iama_server.lifecycle import ENGINE_DIED, Lifecycle, one_line
from iama_server.limits import Limiter, LocalLimiter, RedisLimiter
from iama_server.metrics import Metrics
from iama_server.scoring import BatchedScorer
from iama_server.service import AlignmentService
from iama_server.settings import ServerSettings
from iama_server.usage import UsageStore
from iama_server.vllm_engine import VLLMEngine

log = logging.getLogger("iama.server")


class ServerState:
    def __init__(self, settings: ServerSettings, engine: GenerationEngine | None = None) -> None:
        self.settings = settings
        self.lifecycle = Lifecycle()
        self.metrics = Metrics()
        self.admission = Admission(
            settings.max_concurrent_requests,
            settings.max_queued_requests,
            settings.retry_after_s,
            settings.effective_token_capacity,
            settings.priority_aging_s,
        )
        self.keys = KeyRing(settings.keys_file, settings.api_keys)
        self.limiter: Limiter = RedisLimiter(settings.redis_url) if settings.redis_url else LocalLimiter()
        self.usage = UsageStore(settings.usage_db, fsync=settings.usage_fsync) if settings.usage_db else None
        self.accounting = Accounting(self.usage, self.metrics)
        self.metrics.token_capacity.set(settings.effective_token_capacity)
        # An injected engine (the tests' fake) brings its own model; vLLM gets a checked one.
        self.model_path = resolve_model(settings.model) if engine is None else settings.model
        self.card: ModelCard | None = load_model_card(self.model_path) if Path(self.model_path).is_dir() else None
        self.rewards = RewardSet(bind_tokenizer(served_reward_specs(settings, self.card), self.model_path))
        self.model_name = settings.served_model_name or (
            DEFAULT_MODEL_NAME if settings.model == DEFAULT_MODEL_ALIAS else settings.model
        )
        self.engine: GenerationEngine = engine or VLLMEngine(self.model_path, settings)
        self.scorer = BatchedScorer(
            self.rewards,
            settings.score_batch_size,
            settings.score_batch_wait_ms / 1000,
            self._count_batch,
            processes=settings.score_processes,
        )
        self.calls = CallBuilder(
            self.engine, self.rewards, settings, self.card, (self.model_name, settings.model), self.lifecycle
        )
        self.service = AlignmentService(
            self.engine, self.rewards, self.scorer, self.admission, settings, self.metrics, self.lifecycle,
            self.calls.judge, self.limiter,
        )  # fmt: skip
        self.admission.export(self.metrics.queue_depth, self.metrics.in_flight, self.metrics.tokens_in_use)
        engine = self.engine  # what vLLM's scheduler reports, read at every scrape
        self.metrics.engine_unfinished.set_function(engine.unfinished_requests)
        self.metrics.engine_kv_usage.set_function(lambda: engine.stats.kv_cache_usage)
        self.metrics.engine_generated.set_function(lambda: engine.stats.generated_tokens)

    def _count_batch(self, size: int) -> None:
        self.metrics.score_batches.inc()
        self.metrics.scored.inc(size)

    async def start(self) -> None:
        """Engine start and reward warm-up, side by side off the event loop; READY when both
        succeed, a fatal failure naming what broke otherwise. Then watch the engine."""
        results = await asyncio.gather(
            self._start_engine_and_judge(),
            asyncio.to_thread(self.usage.create) if self.usage is not None else asyncio.sleep(0),
            asyncio.to_thread(self.rewards.warm_up, self._reward_ready),
            return_exceptions=True,
        )
        failures = [one_line(r) for r in results if isinstance(r, BaseException)]
        if failures:
            self.lifecycle.fail("start-up failed: " + "; ".join(failures))
            return
        self.lifecycle.mark_ready()
        log.info("ready: %s with rewards %s", self.model_path, ", ".join(self.rewards.names))
        await self._watch_engine()

    async def _start_engine_and_judge(self) -> None:
        """The engine, then its judge (rubric rewards) warmed on it, when rubrics may be used."""
        await asyncio.to_thread(self.engine.start)
        engine_rubrics = self.rewards.engine_rubrics()
        if self.settings.max_rubrics > 0 or engine_rubrics:
            t0 = time.perf_counter()
            try:
                await self.calls.judge.warm_up()
            except Exception as exc:
                raise RuntimeError(f"the rubric judge failed to warm up: {one_line(exc)}") from exc
            for name in engine_rubrics:
                self._reward_ready(name, time.perf_counter() - t0)

    def _reward_ready(self, name: str, seconds: float) -> None:
        self.lifecycle.ready_rewards.add(name)
        self.metrics.reward_warmup.labels(name).set(seconds)
        log.info("reward %s ready (warm-up %.2f s)", name, seconds)

    async def _watch_engine(self, interval_s: float = 1.0) -> None:
        """A dead engine never recovers: fail at once, even with no traffic to notice it."""
        while self.lifecycle.ready:
            if not self.engine.ready:
                self.lifecycle.fail(ENGINE_DIED)
                return
            await asyncio.sleep(interval_s)


def served_reward_specs(settings: ServerSettings, card: ModelCard | None) -> dict[str, RewardSpec]:
    """The card's rewards, else the default set (unless ``default_rewards`` is off), then the
    settings' ``rewards`` on top."""
    base = dict(card.rewards) if card else dict(DEFAULT_REWARDS) if settings.default_rewards else {}
    specs = {**base, **settings.rewards}
    if not specs:
        raise ValueError("no rewards to serve: set `rewards` or leave `default_rewards` on")
    return specs
