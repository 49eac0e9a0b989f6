"""IAMA adapters on one base: many meta-aligned models served by one engine.

A LoRA run trained with ``lora.merge: false`` saves an adapter directory: ``adapter_config.json``,
the adapter's weights, the tokenizer and ``iama.json``. vLLM serves many adapters on one base
and runs each request through the one it names (its ``LoRARequest``); here the request's
``model`` names it, and picks with it the rewards, normalisation statistics and default weights
of that adapter's ``iama.json``. The base keeps its own.

:class:`ServedModels` is the table a request's ``model`` is looked up in: the base, and every
adapter by name. It counts the calls running through each adapter (:meth:`ServedModels.using`,
held by admission), so that unloading one (``DELETE /v1/adapters/{name}``) stops routing new
requests to it at once and then waits for the running ones (:meth:`ServedModels.drain`) before
the engine drops it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from iama.modelcard import ModelCard
from iama.rewards import Prompt, RewardSet
from iama_server.engine import Adapter
from iama_server.errors import APIError, ErrorCode
from iama_server.schemas.common import ADAPTER_NAME_PATTERN

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_NAME = re.compile(ADAPTER_NAME_PATTERN)
ADAPTER_NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
# The ranks vLLM 0.32 accepts as max_lora_rank (vllm.config.lora.MaxLoRARanks; a test compares them).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class AdapterError(ValueError):
    """An adapter that cannot be served; ``param`` is the setting or request field to blame."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class AdapterDir:
    """What ``adapter_config.json`` says of a LoRA adapter directory."""

    path: str  # resolved
    base: str  # base_model_name_or_path: what it was trained on
    rank: int  # the largest r of any module (r, or rank_pattern's)


def check_adapter_name(name: str, param: str) -> str:
    if not ADAPTER_NAME.fullmatch(name):
        raise AdapterError(f"adapter name {name!r} must be {ADAPTER_NAME_RULE}", param)
    return name


def read_adapter_dir(path: str | Path, param: str) -> AdapterDir:
    """The adapter at ``path``, or an :class:`AdapterError` saying what is there instead."""
    where = Path(path).expanduser()
    if not where.exists():
        raise AdapterError(f"{str(path)!r} does not exist", param)
    if not where.is_dir():
        raise AdapterError(f"{str(path)!r} is a file; give the adapter's directory", param)
    config = where / ADAPTER_CONFIG
    if not config.is_file():
        what = "a full model" if (where / "config.json").is_file() else "no LoRA adapter"
        raise AdapterError(f"{str(path)!r} is {what}, not an adapter (no {ADAPTER_CONFIG})", param)
    try:
        cfg = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{config} cannot be read: {exc}", param) from None
    if not isinstance(cfg, dict) or cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{config} is not a LoRA adapter's config (peft_type LORA)", param)
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise AdapterError(f"{config} does not name its base model (base_model_name_or_path)", param)
    ranks = [int(cfg.get("r") or 8), *(int(r) for r in (cfg.get("rank_pattern") or {}).values())]
    return AdapterDir(str(where.resolve()), str(base), max(ranks))


def adapter_base_of(path: str | Path) -> str | None:
    """The base an adapter directory was trained on, or ``None`` when ``path`` is no adapter."""
    if not (Path(path).expanduser() / ADAPTER_CONFIG).is_file():
        return None
    return read_adapter_dir(path, "model").base


def run_name(path: str | Path) -> str:
    """The name an adapter given as ``--model`` is served under: its run's (``runs/x/model`` →
    ``x``, when the parent holds the run's ``run.json``), else its directory's; characters a
    name may not hold become ``-``."""
    where = Path(path).expanduser().resolve()
    name = where.parent.name if where.name == "model" and (where.parent / "run.json").is_file() else where.name
    name = re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip("._-")[:64]
    return name or "adapter"


def same_base(adapter_base: str, served: str, served_names: Sequence[str]) -> bool:
    """Whether an adapter trained on ``adapter_base`` fits the served base.

    By resolved path when ``adapter_base`` is a directory on this machine (a copy elsewhere is
    another model); else by name: the hub id (or path) as written, or its last part, against
    the served base's path, its directory's name or one of the names it is served under. An
    adapter trained on ``org/Model`` thus fits a local ``.../Model`` directory.
    """
    local = Path(adapter_base).expanduser()
    if local.is_dir():
        return Path(served).is_dir() and local.resolve() == Path(served).resolve()
    if adapter_base == served:
        return True
    last = adapter_base.rstrip("/").rsplit("/", 1)[-1]
    return last in {Path(served).name, served.rstrip("/").rsplit("/", 1)[-1], *served_names}


def check_base(adapter: AdapterDir, served: str, served_names: Sequence[str], param: str) -> None:
    if not same_base(adapter.base, served, served_names):
        raise AdapterError(
            f"adapter {adapter.path!r} was trained on {adapter.base!r}; this server's base is {served!r}", param
        )


def lora_rank_size(rank: int, param: str) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds ``rank``."""
    for size in VLLM_LORA_RANKS:
        if size >= rank:
            return size
    raise AdapterError(f"adapter rank {rank} is over vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}", param)


@dataclass(frozen=True)
class LoraLimits:
    """The engine's LoRA arguments (vLLM's ``enable_lora`` with these), fixed at start."""

    max_loras: int  # adapters in one engine batch at once
    max_lora_rank: int  # one of VLLM_LORA_RANKS
    max_cpu_loras: int  # adapters vLLM keeps loaded in CPU memory (>= max_loras)


def lora_limits(ranks: Sequence[int], max_loras: int | None, max_lora_rank: int | None) -> LoraLimits:
    """The limits for adapters of ``ranks`` (those served from the start): ``max_loras`` their
    number (at least 1) unless set; ``max_lora_rank`` the smallest size vLLM accepts that holds
    the largest r (16, vLLM's default, without any) unless set; every one of them kept in CPU
    memory (``max_cpu_loras``), so that none is reloaded from disk while the server runs."""
    largest = max(ranks, default=0)
    rank = max_lora_rank if max_lora_rank is not None else (lora_rank_size(largest, "adapters") if ranks else 16)
    if largest > rank:
        raise AdapterError(f"an adapter has rank {largest}, over max_lora_rank {rank}", "max_lora_rank")
    loras = max_loras if max_loras is not None else max(1, len(ranks))
    return LoraLimits(loras, rank, max(loras, len(ranks)))


class Scorer(Protocol):
    """What scores a model's candidates with its rewards (``scoring.BatchedScorer``)."""

    async def score(
        self, prompts: Sequence[Prompt], completions: Sequence[str], names: Sequence[str]
    ) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True, eq=False)  # one object per model loaded: compared by identity
class ServedModel:
    """What a request's ``model`` selects: the rewards it is scored with (the adapter's
    ``iama.json``, or the base's) and their scorer, its card, and the adapter it runs through
    (``None``: the base). Models with the same rewards share one reward set and scorer."""

    name: str
    root: str  # the base's path or hub id, or the adapter's directory
    rewards: RewardSet
    scorer: Scorer
    card: ModelCard | None
    adapter: Adapter | None = None


class ServedModels:
    """The base and its adapters by name; requests without ``model`` get :attr:`default`."""

    def __init__(self, base: ServedModel, aliases: Sequence[str] = ()) -> None:
        self.base = base
        self.aliases = tuple(a for a in aliases if a != base.name)  # other names the base answers to
        self.default = base.name
        self._adapters: dict[str, ServedModel] = {}
        self._ids = itertools.count(1)
        self._running: dict[int, int] = {}  # adapter id -> calls running through it
        self._idle: dict[int, asyncio.Event] = {}

    def next_id(self) -> int:
        return next(self._ids)

    @property
    def adapters(self) -> list[ServedModel]:
        return list(self._adapters.values())

    def names(self) -> list[str]:
        return [self.base.name, *self._adapters]

    def taken(self, name: str) -> bool:
        return name in self._adapters or name == self.base.name or name in self.aliases

    def add(self, model: ServedModel) -> None:
        assert model.adapter is not None and not self.taken(model.name)
        self._adapters[model.name] = model

    def get(self, name: str | None) -> ServedModel:
        """The model a request names (``None``: the default), or a 404 naming what is served."""
        name = self.default if name is None else name
        if name == self.base.name or name in self.aliases:
            return self.base
        if name in self._adapters:
            return self._adapters[name]
        raise APIError(
            404,
            f"model {name!r} is not served here; use {self.default!r}"
            + (f" or an adapter: {sorted(self._adapters)}" if self._adapters else ""),
            "model",
            ErrorCode.MODEL_NOT_FOUND,
        )

    @contextmanager
    def using(self, models: Sequence[ServedModel]) -> Iterator[None]:
        """Count the calls running through an adapter while inside; an adapter unloaded since
        the call was built is a 404 here (no call starts on an adapter being drained)."""
        ids = []
        try:
            for m in models:
                if m.adapter is None:
                    continue
                if self._adapters.get(m.name) is not m:
                    raise APIError(404, f"adapter {m.name!r} was unloaded", "model", ErrorCode.MODEL_NOT_FOUND)
                self._running[m.adapter.id] = self._running.get(m.adapter.id, 0) + 1
                ids.append(m.adapter.id)
            yield
        finally:
            for i in ids:
                self._running[i] -= 1
                if not self._running[i]:
                    del self._running[i]
                    if (idle := self._idle.pop(i, None)) is not None:
                        idle.set()

    def running(self, model: ServedModel) -> int:
        return 0 if model.adapter is None else self._running.get(model.adapter.id, 0)

    def retire(self, name: str) -> ServedModel:
        """Stop routing requests to an adapter; the calls already running keep it (:meth:`drain`)."""
        if name == self.base.name or name in self.aliases:
            raise APIError(400, f"{name!r} is the base model; only adapters can be unloaded", "name")
        if name not in self._adapters:
            raise APIError(404, f"no adapter {name!r} is loaded", "name", ErrorCode.MODEL_NOT_FOUND)
        return self._adapters.pop(name)

    async def drain(self, model: ServedModel, timeout_s: float) -> int:
        """Wait until no call runs through ``model`` (at most ``timeout_s``); the calls still
        running then."""
        assert model.adapter is not None
        if self.running(model):
            idle = self._idle.setdefault(model.adapter.id, asyncio.Event())
            try:
                await asyncio.wait_for(idle.wait(), timeout_s)
            except TimeoutError:
                pass
        return self.running(model)
