"""Majority vote over a request's candidates (self-consistency), pure.

Best-of-N asks a reward which answer is best; a vote asks the candidates: each candidate's
answer is extracted (a regular expression, a JSON path, or the value a scalar reward reads, such
as the number it answers), the most frequent answer wins, and the returned candidate is the
best-scoring one that gave it. Ties between answers go to the one whose best candidate scores
higher. With weights (e.g. the soft-BoN probabilities of the scores) each candidate's vote
counts its weight instead of one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import regex
from numpy.typing import ArrayLike

# A pattern a client wrote runs on the server: Python's `re` has no timeout, and a pattern such as
# (a+)+$ backtracks exponentially on a long answer. The `regex` module's timeout bounds each search.
REGEX_TIMEOUT_S = 0.05


@dataclass(frozen=True)
class Vote:
    chosen: int  # the candidate returned: the best-scoring one with the winning answer
    answer: str | None  # the winning answer; None when no candidate gave one (best score returned)
    counts: dict[str, float]  # answer -> votes (or summed weights), most first


def regex_answers(texts: Sequence[str], pattern: str, timeout_s: float = REGEX_TIMEOUT_S) -> list[str | None]:
    """The first match of ``pattern`` in each text (its first group when it has groups); a
    search that runs past ``timeout_s`` gives no answer."""
    rx = regex.compile(pattern)
    out: list[str | None] = []
    for t in texts:
        try:
            m = rx.search(t, timeout=timeout_s)
        except TimeoutError:
            m = None
        out.append(None if m is None else (m.group(1) if rx.groups else m.group(0)))
    return out


def json_path_answers(texts: Sequence[str], path: str) -> list[str | None]:
    """The value at a dotted ``path`` (list indices as numbers, ``""`` for the whole value) of
    each text parsed as JSON; a value that is not a string is its canonical JSON."""
    keys = [k for k in path.split(".") if k]
    out: list[str | None] = []
    for t in texts:
        try:
            value = json.loads(t)
            for k in keys:
                value = value[int(k)] if isinstance(value, list) else value[k]
        except (ValueError, KeyError, IndexError, TypeError):
            out.append(None)
            continue
        out.append(value if isinstance(value, str) else json.dumps(value, sort_keys=True))
    return out


def scalar_answers(values: ArrayLike) -> list[str | None]:
    """A scalar reward's values as answers (``%g``: 42.0 and 42 are one answer); NaN: none."""
    return [None if not math.isfinite(v) else f"{v:g}" for v in np.asarray(values, dtype=np.float64)]


def plurality(answers: Sequence[str | None], scores: ArrayLike, weights: ArrayLike | None = None) -> Vote:
    """The vote among the candidates with an answer and a finite score (a NaN score: a
    candidate that may not be chosen). See the module docstring for the rules."""
    s = np.asarray(scores, dtype=np.float64)
    if len(answers) != s.size:
        raise ValueError(f"answers and scores must be one per candidate: {len(answers)} vs {s.size}")
    w = np.ones(s.size) if weights is None else np.asarray(weights, dtype=np.float64)
    counts: dict[str, float] = {}
    best: dict[str, int] = {}  # answer -> its best-scoring candidate (lowest index among ties)
    for i, a in enumerate(answers):
        if a is None or not math.isfinite(s[i]):
            continue
        counts[a] = counts.get(a, 0.0) + float(w[i])
        if a not in best or s[i] > s[best[a]]:
            best[a] = i
    if not counts:
        finite = np.where(np.isfinite(s), s, -np.inf)
        return Vote(int(np.argmax(finite)), None, {})
    winner = max(counts, key=lambda a: (counts[a], s[best[a]], -best[a]))
    ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], best[kv[0]])))
    return Vote(best[winner], winner, ordered)
