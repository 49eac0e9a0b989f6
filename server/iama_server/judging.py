"""Rubric rewards judged by the served model, on the serving engine.

A request's ``rubrics`` (and the config's ``judge`` rewards that name no model or url) are
scored here, not by the scorer's thread: the judge is the model vLLM already holds, so its
ratings cost one engine round for all of a request's answers and rubrics together
(:meth:`GenerationEngine.next_token_logprobs`: one step each, submitted at once, batched by
vLLM's scheduler, measured at 2 engine steps for 8 reads). The rubric and the question open
every judge prompt and the answer closes it, so the shared part is a cacheable prefix; within
one round vLLM does not reuse it (reads scheduled together share no block still being computed:
0 prefix-cache hits measured), so each read computes it. The rating is the expectation over
the digit tokens' exact log-probs (:mod:`iama.judging`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from iama.judging import expected_ratings, judge_messages, rating_token_ids, vocabulary
from iama.rewards import Prompt, reward_prompt
from iama_server.engine import Adapter, GenerationEngine

# Re-encoding an answer's text inside the judge prompt may take a few more tokens than it was
# generated with (tokens merge differently across the join): room kept in the cost and context.
JUDGE_TOKEN_MARGIN = 16
MAX_RATING_TOKENS = 128  # vLLM's bound on logprob_token_ids


class EngineJudge:
    """Builds judge prompts in the served model's chat template and reads its ratings."""

    def __init__(self, engine: GenerationEngine) -> None:
        self.engine = engine
        self._ratings: dict[int, int] | None = None

    def ratings(self) -> dict[int, int]:
        """Token id → rating, read from the tokenizer once (every token that is one digit)."""
        if self._ratings is None:
            ratings = rating_token_ids(vocabulary(self._decode_one, self.engine.vocab_size))
            if len(ratings) > MAX_RATING_TOKENS:
                raise ValueError(f"{len(ratings)} digit tokens; the engine reads at most {MAX_RATING_TOKENS}")
            self._ratings = ratings
        return self._ratings

    def _decode_one(self, token_id: int) -> str:
        try:
            return self.engine.decode([token_id])
        except (IndexError, KeyError, ValueError, TypeError, OverflowError):  # ids past the tokenizer's (padded vocab)
            return ""

    def prompt_ids(self, rubric: str, prompt: Prompt, answer: str) -> list[int]:
        messages = judge_messages(rubric, reward_prompt(prompt), answer)
        if self.engine.has_chat_template():
            return self.engine.encode_chat(messages)
        return self.engine.encode_text(messages[0]["content"])

    def prefix_tokens(self, rubric: str, prompt: Prompt) -> int:
        """The judge prompt's tokens without the answer: what admission adds to each answer's."""
        return len(self.prompt_ids(rubric, prompt, ""))

    async def score(
        self,
        prompt: Prompt,
        texts: Sequence[str],
        rubrics: Mapping[str, str],
        request_id: str,
        priority: int = 0,
        adapter: Adapter | None = None,
    ) -> tuple[dict[str, np.ndarray], int]:
        """Each rubric's rating of each text, in [0, 1], from one engine round; and the judge
        prompt tokens that round read. ``adapter``: the request's model judges (an adapter's
        requests are judged through that adapter, as they were generated)."""
        names = list(rubrics)
        prompts = [self.prompt_ids(rubrics[n], prompt, t) for n in names for t in texts]
        if not prompts:
            return {}, 0
        ratings = self.ratings()
        rows = await self.engine.next_token_logprobs(prompts, sorted(ratings), f"{request_id}-judge", priority, adapter)
        scores = expected_ratings(rows, ratings)
        k = len(texts)
        return {n: scores[i * k : (i + 1) * k] for i, n in enumerate(names)}, sum(map(len, prompts))

    async def warm_up(self) -> None:
        """Read the rating tokens and judge one answer, so the first rubric pays no cold start
        and a tokenizer without digit tokens fails start-up, not a request."""
        await self.score("How are you?", ["Well, thank you."], {"warm-up": "polite"}, "warm-up")
