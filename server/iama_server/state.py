"""Everything a request needs, built once per app (no module globals: several apps coexist).

Which model and rewards are served is decided here: a trained checkpoint brings its rewards
and normalisation statistics in ``iama.json``; a plain model gets the default reward set;
the settings' ``rewards`` add to or override either. Each adapter (``adapters.py``: the
settings' ``adapters``, a ``--model`` that is an adapter, or ``POST /v1/adapters`` at run time)
brings its own the same way, served on the one base; identical reward sets share one scorer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from iama.modelcard import ModelCard, load_model_card
from iama.models import DEFAULT_MODEL_ALIAS, DEFAULT_MODEL_NAME, resolve_model
from iama.rewards import DEFAULT_REWARDS, RewardSet, RewardSpec, bind_tokenizer
from iama_server.accounting import Accounting
from iama_server.adapters import (
    AdapterDir,
    AdapterError,
    LoraLimits,
    ServedModel,
    ServedModels,
    adapter_base_of,
    check_adapter_name,
    check_base,
    lora_limits,
    read_adapter_dir,
    run_name,
)
from iama_server.admission import Admission
from iama_server.calls import CallBuilder
from iama_server.engine import Adapter, GenerationEngine
from iama_server.errors import APIError, ErrorCode
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
        # The base: --model, or the base of the adapter --model names (served on it, by default).
        # An injected engine (the tests' fake) brings its own model; vLLM gets a checked one.
        given = settings.model
        self.model_path = resolve_model(given, adapter_ok=True) if engine is None else given
        adapter_dirs = {name: (path, f"adapters.{name}") for name, path in settings.adapters.items()}
        default_adapter = None
        if (base := adapter_base_of(self.model_path)) is not None:
            default_adapter = run_name(self.model_path)
            if default_adapter in adapter_dirs:
                raise AdapterError(f"adapter name {default_adapter!r} is taken by --model {given}", "adapters")
            adapter_dirs[default_adapter] = (self.model_path, "model")
            given, self.model_path = base, resolve_model(base) if engine is None else base
        self.card: ModelCard | None = load_model_card(self.model_path) if Path(self.model_path).is_dir() else None
        self.rewards = RewardSet(bind_tokenizer(served_reward_specs(settings, self.card), self.model_path))
        base_name = settings.served_model_name or (DEFAULT_MODEL_NAME if given == DEFAULT_MODEL_ALIAS else given)
        dirs = {
            name: self._checked_adapter(name, path, param, (base_name, given))
            for name, (path, param) in adapter_dirs.items()
        }
        enable = settings.enable_lora if settings.enable_lora is not None else bool(dirs)
        if dirs and not enable:
            raise AdapterError(f"serving adapter(s) {sorted(dirs)} needs enable_lora", "enable_lora")
        self.lora: LoraLimits | None = (
            lora_limits([d.rank for d in dirs.values()], settings.max_loras, settings.max_lora_rank) if enable else None
        )
        self.engine: GenerationEngine = engine or VLLMEngine(self.model_path, settings, self.lora)
        self.scorer = self._scorer(self.rewards)
        self.scorers: dict[int, BatchedScorer] = {}  # an adapter's own (adapter id -> scorer)
        self.models = ServedModels(
            ServedModel(base_name, self.model_path, self.rewards, self.scorer, self.card), aliases=(given,)
        )
        for name, found in dirs.items():
            self.models.add(self._adapter_model(name, found))
        if default_adapter is not None:
            self.models.default = default_adapter
        self.model_name = self.models.default  # what /health names, and requests without `model` get
        self._adapter_lock = asyncio.Lock()  # one load or unload at a time
        self.calls = CallBuilder(self.engine, self.models, settings, self.lifecycle)
        self.service = AlignmentService(
            self.engine, self.models, self.admission, settings, self.metrics, self.lifecycle, self.calls.judge,
            self.limiter,
        )  # fmt: skip
        self.admission.export(self.metrics.queue_depth, self.metrics.in_flight, self.metrics.tokens_in_use)
        engine = self.engine  # what vLLM's scheduler reports, read at every scrape
        self.metrics.engine_unfinished.set_function(engine.unfinished_requests)
        self.metrics.engine_kv_usage.set_function(lambda: engine.stats.kv_cache_usage)
        self.metrics.engine_generated.set_function(lambda: engine.stats.generated_tokens)

    def _count_batch(self, size: int) -> None:
        self.metrics.score_batches.inc()
        self.metrics.scored.inc(size)

    def _scorer(self, rewards: RewardSet) -> BatchedScorer:
        s = self.settings
        return BatchedScorer(
            rewards, s.score_batch_size, s.score_batch_wait_ms / 1000, self._count_batch, processes=s.score_processes
        )

    def all_scorers(self) -> list[BatchedScorer]:
        return [self.scorer, *self.scorers.values()]

    # ------------------------------------------------------------------ adapters
    def _checked_adapter(self, name: str, path: str, param: str, base_names: Sequence[str]) -> AdapterDir:
        """An adapter directory that fits the served base (``adapters.same_base``), under a name
        that is not the base's."""
        check_adapter_name(name, param)
        if name in base_names:
            raise AdapterError(f"adapter name {name!r} is the base model's; give it another", param)
        found = read_adapter_dir(path, param)
        check_base(found, self.model_path, base_names, param)
        return found

    def _adapter_model(self, name: str, found: AdapterDir) -> ServedModel:
        """The adapter's rewards from its ``iama.json`` (as the base's: its card's, else the
        default set; the settings' ``rewards`` on top), bound to the base's tokenizer (the
        engine's); the base's reward set and scorer when they are the same rewards."""
        card = load_model_card(found.path)
        specs = bind_tokenizer(served_reward_specs(self.settings, card), self.model_path)
        adapter = Adapter(name, self.models.next_id(), found.path)
        if specs == self.rewards.specs:
            return ServedModel(name, found.path, self.rewards, self.scorer, card, adapter)
        rewards = RewardSet(specs)
        scorer = self.scorers[adapter.id] = self._scorer(rewards)
        return ServedModel(name, found.path, rewards, scorer, card, adapter)

    async def load_adapter(self, name: str, path: str) -> ServedModel:
        """``POST /v1/adapters``: check the adapter (a 400 naming ``name`` or ``path``), build its
        rewards and warm them up off the event loop, load it into the engine, then route
        requests to it."""
        if self.lora is None:
            raise APIError(
                400,
                "this server's engine was started without LoRA (enable_lora is off): start it with "
                "enable_lora: true (or with adapters) to load adapters at run time",
            )
        if not self.lifecycle.ready:
            raise APIError(503, f"server is {self.lifecycle.phase.value}", code=ErrorCode.NOT_READY)
        async with self._adapter_lock:
            if self.models.taken(name):
                raise APIError(400, f"model name {name!r} is taken; unload it first or choose another", "name")
            try:
                found = self._checked_adapter(name, path, "path", [self.models.base.name, *self.models.aliases])
                if found.rank > self.lora.max_lora_rank:
                    raise AdapterError(
                        f"adapter rank {found.rank} is over this engine's max_lora_rank {self.lora.max_lora_rank} "
                        "(set max_lora_rank at start)",
                        "path",
                    )
                model = self._adapter_model(name, found)  # light: rewards load when warmed up (below)
            except AdapterError as exc:
                raise APIError(400, str(exc), exc.param) from None
            except (ValueError, ValidationError) as exc:  # its iama.json, or a reward in it
                raise APIError(400, f"adapter {path!r}: {one_line(exc)}", "path") from None
            try:
                await self._warm_adapter(model)
                await self.engine.add_adapter(model.adapter)  # type: ignore[arg-type]
            except Exception as exc:
                await self._drop_scorer(model)
                if not self.engine.ready:  # vLLM's EngineDeadError: fatal, as for any request
                    self.lifecycle.fail(ENGINE_DIED)
                    raise APIError(503, ENGINE_DIED, code=ErrorCode.NOT_READY, headers={"Retry-After": "5"}) from None
                raise APIError(400, f"adapter {path!r} cannot be served: {one_line(exc)}", "path") from None
            self.models.add(model)
        log.info("adapter %s loaded from %s (rewards %s)", name, model.root, ", ".join(model.rewards.names))
        return model

    async def _warm_adapter(self, model: ServedModel) -> None:
        """Its own rewards loaded and run once (a reward that cannot load is the adapter's fault);
        the judge warmed when it brings rubric rewards the engine judges."""
        assert model.adapter is not None
        if model.adapter.id in self.scorers:
            self.scorers[model.adapter.id].start()
            await asyncio.to_thread(model.rewards.warm_up, self._reward_ready)
        if model.rewards.engine_rubrics():
            await self.calls.judge.warm_up()

    async def _drop_scorer(self, model: ServedModel) -> None:
        if model.adapter is not None and (scorer := self.scorers.pop(model.adapter.id, None)) is not None:
            await scorer.stop()

    async def unload_adapter(self, name: str) -> int:
        """``DELETE /v1/adapters/{name}``: no new request is routed to it from now; the running
        ones finish first (waited for up to the request timeout, which bounds every request),
        then the engine drops it. Returns how many were still running when it was dropped."""
        async with self._adapter_lock:
            model = self.models.retire(name)
        assert model.adapter is not None
        left = await self.models.drain(model, self.settings.request_timeout_s)
        if left:
            log.warning("adapter %s unloaded with %d request(s) still running past the timeout", name, left)
        await self.engine.remove_adapter(model.adapter)
        await self._drop_scorer(model)
        log.info("adapter %s unloaded", name)
        return left

    async def start(self) -> None:
        """Engine start and reward warm-up, side by side off the event loop; READY when both
        succeed, a fatal failure naming what broke otherwise. Then watch the engine."""
        reward_sets = [self.rewards, *(s.rewards for s in self.scorers.values())]  # the base's, adapters' own
        results = await asyncio.gather(
            self._start_engine_and_judge(),
            asyncio.to_thread(self.usage.create) if self.usage is not None else asyncio.sleep(0),
            *(asyncio.to_thread(r.warm_up, self._reward_ready) for r in reward_sets),
            return_exceptions=True,
        )
        failures = [one_line(r) for r in results if isinstance(r, BaseException)]
        if failures:
            self.lifecycle.fail("start-up failed: " + "; ".join(failures))
            return
        self.lifecycle.mark_ready()
        log.info("ready: %s with rewards %s", self.model_path, ", ".join(self.rewards.names))
        for m in self.models.adapters:
            log.info("ready: adapter %s (%s) with rewards %s", m.name, m.root, ", ".join(m.rewards.names))
        await self._watch_engine()

    async def _start_engine_and_judge(self) -> None:
        """The engine and its adapters, then its judge (rubric rewards) warmed on it, when
        rubrics may be used."""
        await asyncio.to_thread(self.engine.start)
        for m in self.models.adapters:
            assert m.adapter is not None
            try:
                await self.engine.add_adapter(m.adapter)
            except Exception as exc:
                raise RuntimeError(f"adapter {m.name!r} ({m.root}) failed to load: {one_line(exc)}") from exc
        engine_rubrics = {
            n: r for m in [self.models.base, *self.models.adapters] for n, r in m.rewards.engine_rubrics().items()
        }
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
