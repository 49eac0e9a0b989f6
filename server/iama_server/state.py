"""Everything a request needs, built once per app (no module globals: several apps coexist).

Which model and rewards are served is decided here: a trained checkpoint brings its rewards
and normalisation statistics in ``iama.json``; a plain model gets the default reward set;
the settings' ``rewards`` add to or override either.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from iama.modelcard import ModelCard, load_model_card
from iama.models import DEFAULT_MODEL_ALIAS, DEFAULT_MODEL_NAME, resolve_model
from iama.rewards import DEFAULT_REWARDS, RewardSet, RewardSpec, bind_tokenizer
from iama_server.admission import Admission
from iama_server.engine import GenerationEngine, VLLMEngine
from iama_server.metrics import Metrics
from iama_server.scoring import BatchedScorer
from iama_server.service import AlignmentService
from iama_server.settings import ServerSettings

log = logging.getLogger("iama.server")


class ServerState:
    def __init__(self, settings: ServerSettings, engine: GenerationEngine | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.admission = Admission(
            settings.max_concurrent_requests, settings.max_queued_requests, settings.retry_after_s
        )
        self.model_path = resolve_model(settings.model)
        self.card: ModelCard | None = load_model_card(self.model_path) if Path(self.model_path).is_dir() else None
        self.rewards = RewardSet(bind_tokenizer(served_reward_specs(settings, self.card), self.model_path))
        self.model_name = settings.served_model_name or (
            DEFAULT_MODEL_NAME if settings.model == DEFAULT_MODEL_ALIAS else settings.model
        )
        self.engine: GenerationEngine = engine or VLLMEngine(self.model_path, settings)
        self.scorer = BatchedScorer(
            self.rewards, settings.score_batch_size, settings.score_batch_wait_ms / 1000, self._count_batch
        )
        self.service = AlignmentService(
            self.engine,
            self.rewards,
            self.scorer,
            settings,
            self.metrics,
            self.card,
            (self.model_name, settings.model),
        )
        self.engine_error: str | None = None
        self.api_keys = [k.get_secret_value() for k in settings.api_keys]

    def _count_batch(self, size: int) -> None:
        self.metrics.score_batches.inc()
        self.metrics.scored.inc(size)

    async def start_engine(self) -> None:
        """Start the engine off the event loop; /health reports a failure instead of crashing."""
        try:
            await asyncio.to_thread(self.engine.start)
            log.info("engine ready: %s", self.model_path)
        except Exception as exc:
            self.engine_error = f"{type(exc).__name__}: {exc}"
            log.exception("engine failed to start")


def served_reward_specs(settings: ServerSettings, card: ModelCard | None) -> dict[str, RewardSpec]:
    """The card's rewards, else the default set (unless ``default_rewards`` is off), then the
    settings' ``rewards`` on top."""
    base = dict(card.rewards) if card else dict(DEFAULT_REWARDS) if settings.default_rewards else {}
    specs = {**base, **settings.rewards}
    if not specs:
        raise ValueError("no rewards to serve: set `rewards` or leave `default_rewards` on")
    return specs
