"""What running one :class:`~iama_server.calls.AlignmentCall` produced: every candidate, its
scores, the chosen ones, what a search did, and how long each part took. A value: the service
builds it, rendering (pure) reads it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from iama.algorithms import selection_kl_bound
from iama.voting import Vote
from iama_server.calls import AlignmentCall
from iama_server.engine import GenerationResult
from iama_server.searches import Checkpoint, Rejection


@dataclass(frozen=True)
class Search:
    """What early rejection or an adaptive budget did, for the response and the metrics."""

    rejected: dict[int, Rejection] = field(default_factory=dict)  # candidate -> partial scores when stopped
    checkpoints: list[Checkpoint] | None = None  # early rejection's decisions
    partial_rewards: list[str] = field(default_factory=list)  # the rewards that judged partial texts
    budget_spent: int | None = None  # budget "auto"


@dataclass(frozen=True)
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
    search: Search = field(default_factory=Search)
    eligible: int | None = None  # candidates the request's rules allowed (format, finished); None: no rule
    vote: Vote | None = None  # algorithm "vote": the answer and the votes
    judge_tokens: int = 0  # prompt tokens the engine read judging the call's rubrics

    @property
    def kl_bound(self) -> float:
        """BoN's sharp bound holds for exact BoN; a candidate picked from at most N by any other
        rule (soft BoN, early rejection, an adaptive stop) has density ratio ≤ N: log N."""
        if self.weighted is None:
            return 0.0
        algorithm = self.call.algorithm
        if self.call.mode == "bon" and algorithm != "vote":
            return selection_kl_bound(algorithm, self.call.budget)
        # any other rule picking one of N (a vote too) has density ratio ≤ N: log N
        return selection_kl_bound("soft_bon", self.call.budget)

    @property
    def spent_tokens(self) -> int:
        """What the call used of the engine: its prompt, every candidate's tokens, the judge's."""
        return self.generation.prompt_tokens + self.completion_tokens + self.judge_tokens

    @property
    def completion_tokens(self) -> int:
        return sum(c.token_count for c in self.generation.candidates)
