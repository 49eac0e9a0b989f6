"""A named set of reward instances: what a model is trained with and what a server serves.

Users name reward *instances* (``short: {type: length, target: 20}``) so that one reward type
can appear twice with different parameters, as in the paper's short-vs-long length task.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from iama._arrays import FloatArray
from iama.rewards.aggregation import validate_weights, weighted_score
from iama.rewards.base import RewardFunction, ScalarReward, check_scores
from iama.rewards.catalog import create_reward
from iama.rewards.conversation import Prompt, as_conversation, reward_prompt
from iama.rewards.normalization import RewardStats


class RewardSpec(BaseModel):
    """``type`` is a registered name or ``hf:<path-or-id>``; all other keys are parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    stats: RewardStats | None = None

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, data: Any) -> Any:
        # Accept the flat YAML form {type: length, target: 20} as well as {type, params}.
        if isinstance(data, str):
            return {"type": data}
        if isinstance(data, dict):
            known = {"type", "params", "stats"}
            extra = {k: v for k, v in data.items() if k not in known}
            if extra:
                data = {k: v for k, v in data.items() if k in known}
                data["params"] = {**data.get("params", {}), **extra}
        return data


DEFAULT_REWARDS: dict[str, RewardSpec] = {
    "sentiment": RewardSpec(type="sentiment"),
    "negative_sentiment": RewardSpec(type="negative_sentiment"),
    "length": RewardSpec(type="length"),
    "conciseness": RewardSpec(type="conciseness"),
    "readability": RewardSpec(type="readability"),
    "no_profanity": RewardSpec(type="no_profanity"),
    "relevance": RewardSpec(type="relevance"),
}


_TOKEN_LENGTH_TYPES = ("length", "conciseness")


def bind_tokenizer(specs: Mapping[str, RewardSpec], tokenizer: str) -> dict[str, RewardSpec]:
    """Token-length rewards that name no tokenizer count with ``tokenizer`` (the policy's own).

    Model cards leave it unset so a checkpoint stays portable; whoever loads the model binds it.
    """
    out = {}
    for name, spec in specs.items():
        if (
            spec.type in _TOKEN_LENGTH_TYPES
            and spec.params.get("unit") == "tokens"
            and not spec.params.get("tokenizer")
        ):
            spec = spec.model_copy(update={"params": {**spec.params, "tokenizer": tokenizer}})
        out[name] = spec
    return out


WARM_UP_PAIR = ("How are you today?", "I am well, thank you. The weather is lovely.")


class RewardLoadError(RuntimeError):
    """A reward that could not be loaded or run; the message names it, on one line."""


class RewardSet:
    """Reward instances by name, with their normalisation statistics."""

    def __init__(self, specs: Mapping[str, RewardSpec | Mapping[str, Any] | str]) -> None:
        if not specs:
            raise ValueError("a reward set needs at least one reward")
        self.specs: dict[str, RewardSpec] = {
            k: v if isinstance(v, RewardSpec) else RewardSpec.model_validate(v) for k, v in specs.items()
        }
        self.functions: dict[str, RewardFunction] = {}
        for name, spec in self.specs.items():
            try:
                self.functions[name] = create_reward(spec.type, **spec.params)
            except (ValueError, KeyError) as exc:
                raise ValueError(f"reward {name!r}: {exc}") from exc

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    @property
    def stats(self) -> dict[str, RewardStats]:
        return {k: s.stats for k, s in self.specs.items() if s.stats is not None}

    def with_stats(self, stats: Mapping[str, RewardStats]) -> RewardSet:
        """Same functions, new statistics (no reloading of neural models)."""
        new = object.__new__(RewardSet)
        new.specs = {k: s.model_copy(update={"stats": stats.get(k, s.stats)}) for k, s in self.specs.items()}
        new.functions = self.functions
        return new

    def score(
        self,
        prompts: Sequence[Prompt],
        completions: Sequence[str],
        names: Sequence[str] | None = None,
        token_counts: Sequence[int] | None = None,
    ) -> dict[str, FloatArray]:
        """Raw scores per reward (only ``names`` if given), each checked for shape/finiteness.

        A prompt is a string or a conversation; conversational rewards (``conversational =
        True``, e.g. reward models with a chat template) get the turns, the others the text of
        the last user turn (``iama.rewards.conversation``). ``token_counts``: how many tokens
        each completion was generated with (no final EOS), for rewards that count tokens
        (``counts_tokens = True``) and would otherwise re-tokenise the decoded text.
        """
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        texts: list[str] | None = None
        turns: list[list[dict[str, str]]] | None = None
        out: dict[str, FloatArray] = {}
        for name in names if names is not None else self.names:
            fn = self.functions[name]
            if getattr(fn, "conversational", False):
                turns = turns if turns is not None else [as_conversation(p) for p in prompts]
                scores = fn.score(turns, completions)  # type: ignore[arg-type]
            else:
                texts = texts if texts is not None else [reward_prompt(p) for p in prompts]
                if token_counts is not None and getattr(fn, "counts_tokens", False):
                    scores = fn.score(texts, completions, token_counts=token_counts)  # type: ignore[call-arg]
                else:
                    scores = fn.score(texts, completions)
            out[name] = check_scores(scores, len(completions), name)
        return out

    def warm_up(self, on_ready: Callable[[str, float], None] | None = None) -> dict[str, float]:
        """Load and run every reward once on a dummy pair; seconds each took.

        Some rewards load their model on first use (``relevance``: 12.0 s for the first score
        on a 2-core CPU, 0.065 s for the second), so a server calls this before it reports
        ready and evaluation before it samples: a broken reward fails at start-up, naming
        itself (:class:`RewardLoadError`), and no request pays the cold start.
        """
        seconds: dict[str, float] = {}
        for name in self.names:
            if name in self.engine_rubrics():
                continue  # judged by the serving engine, which warms it up itself
            t0 = time.perf_counter()
            try:
                self.score([WARM_UP_PAIR[0]], [WARM_UP_PAIR[1]], [name])
            except Exception as exc:
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise RewardLoadError(
                    f"reward {name!r} ({self.specs[name].type}) failed to load: {type(exc).__name__}: {detail}"
                ) from exc
            seconds[name] = time.perf_counter() - t0
            if on_ready is not None:
                on_ready(name, seconds[name])
        return seconds

    def engine_rubrics(self) -> dict[str, str]:
        """``judge`` rewards that name no model or url, by name → rubric: only an alignment
        server can score them, with its own engine (``iama.rewards.judge``)."""
        return {n: f.rubric for n, f in self.functions.items() if getattr(f, "on_engine", False)}  # type: ignore[attr-defined]

    def scalar_rewards(self) -> dict[str, ScalarReward]:
        """Those rewards that depend on a completion only through one number."""
        return {n: f for n, f in self.functions.items() if isinstance(f, ScalarReward)}

    def judging_partial_text(self, names: Sequence[str]) -> list[str]:
        """Those of ``names`` whose score of a partial completion means something."""
        return [n for n in names if getattr(self.functions[n], "judges_partial_text", False)]

    def validate_weights(self, weights: Mapping[str, float]) -> dict[str, float]:
        return validate_weights(weights, self.names)

    def combine(self, scores: Mapping[str, FloatArray], weights: Mapping[str, float]) -> FloatArray:
        """Weighted sum of normalised scores; ``weights`` are validated here."""
        return weighted_score(scores, self.validate_weights(weights), self.stats)
