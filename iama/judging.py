"""Rubric rewards: the judge's prompt, and its score from one step's log-probabilities.

A rubric ("answer as you would to a ten-year-old") is a preference no installed reward
expresses; an LLM reads it and rates each answer. As in G-Eval, the score is never a parsed
string: it is the **expectation of the rating under the judge's next-token distribution** at
the one step where it writes the rating. A parsed "7" throws away that the judge was torn
between 6 and 8, and a judge that writes "Seven" or a sentence would score nothing; the
expectation is smooth in the answer, so best-of-N can rank by it, and it costs one forward
step per answer (no decoding).

The ratings are the ten digits 0–9, normalised to [0, 1] (``rating / 9``). Not 1–10: "10" is
two tokens in most tokenizers (SmolLM2's splits every number into digits), so it cannot be
read in one step. Every token that decodes to a digit, with or without a leading space
(``"7"``, ``" 7"``, ``"▁7"``), counts for that digit; the distribution is renormalised over the
digits, so the mass the judge puts elsewhere does not lower the score.

The prompt puts the rubric and the question first and the answer last, so the N answers of
one request share their prompt up to the answer: a prefix cache can reuse it across rounds
(within one round of reads vLLM computes it for each: ``benchmarks/results/judge``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

LEVELS = 10  # the ratings 0..9
SCORE_PREFIX = "Rating (0-9):"  # what the judge's instruction ends with; it answers one digit

JUDGE_INSTRUCTION = (
    "You are a strict grader. Rate how well the answer below meets the rubric, "
    "from 0 (not at all) to 9 (perfectly). Reply with a single digit and nothing else."
)


def judge_messages(rubric: str, question: str, answer: str) -> list[dict[str, str]]:
    """The judge's conversation for one answer: one user turn, the shared part first."""
    content = f"{JUDGE_INSTRUCTION}\n\nRubric: {rubric}\n\nQuestion: {question}\n\nAnswer: {answer}\n\n{SCORE_PREFIX}"
    return [{"role": "user", "content": content}]


def digit_of(token_text: str) -> int | None:
    """The rating a token writes: its text is one digit, give or take surrounding spaces
    (byte-level BPE's ``"Ġ7"`` decodes to ``" 7"``, SentencePiece's ``"▁7"`` to ``"7"``)."""
    s = token_text.strip().lstrip("\u2581")
    return int(s) if len(s) == 1 and s.isascii() and s.isdigit() else None


def rating_token_ids(decoded: Iterable[tuple[int, str]]) -> dict[int, int]:
    """Token id → rating, over a vocabulary's ``(id, decoded text)`` pairs. Raises where a
    digit has no token of its own: such a judge cannot write that rating in one step."""
    ids = {tid: d for tid, text in decoded if (d := digit_of(text)) is not None}
    missing = sorted(set(range(LEVELS)) - set(ids.values()))
    if missing:
        raise ValueError(f"the judge's tokenizer has no single token for the digit(s) {missing}")
    return ids


def level_logprobs(token_logprobs: Mapping[int, float], ratings: Mapping[int, int]) -> dict[int, float]:
    """Log-probability of each rating: log-sum-exp over the tokens that write it. Tokens not
    among ``ratings`` are ignored; a rating with none of its tokens present is absent."""
    by_level: dict[int, list[float]] = {}
    for tid, lp in token_logprobs.items():
        if tid in ratings and np.isfinite(lp):
            by_level.setdefault(ratings[tid], []).append(lp)
    return {d: float(np.logaddexp.reduce(lps)) for d, lps in by_level.items()}


def expected_rating(levels: Mapping[int, float], *, default: float = 0.5) -> float:
    """E[rating] / 9 in [0, 1] under the judge's distribution renormalised over the ratings
    present (``levels``: rating → log-probability). ``default`` (the scale's middle: no
    opinion) where no rating is present, as when a remote judge's top alternatives hold no
    digit at all."""
    if not levels:
        return default
    d = np.fromiter(levels.keys(), dtype=np.float64)
    lp = np.fromiter(levels.values(), dtype=np.float64)
    p = np.exp(lp - lp.max())
    return float((p * d).sum() / p.sum() / (LEVELS - 1))


def expected_ratings(
    rows: Sequence[Mapping[int, float]], ratings: Mapping[int, int], *, default: float = 0.5
) -> np.ndarray:
    """:func:`expected_rating` of each row of token log-probabilities (token id → log-prob)."""
    return np.array([expected_rating(level_logprobs(r, ratings), default=default) for r in rows], dtype=np.float64)


def vocabulary(decode: Callable[[int], str], size: int) -> list[tuple[int, str]]:
    """``(id, text)`` of every token id below ``size``, decoded one at a time (a token's own
    text, not the text it makes beside others)."""
    return [(i, decode(i)) for i in range(size)]


def rating_of_alternatives(alternatives: Sequence[tuple[str, float]], *, default: float = 0.5) -> float:
    """:func:`expected_rating` from a step's top alternatives known only by their text, as an
    OpenAI-compatible server returns them (``top_logprobs``)."""
    by_level: dict[int, list[float]] = {}
    for text, lp in alternatives:
        if (d := digit_of(text)) is not None and np.isfinite(lp):
            by_level.setdefault(d, []).append(lp)
    return expected_rating({d: float(np.logaddexp.reduce(v)) for d, v in by_level.items()}, default=default)
