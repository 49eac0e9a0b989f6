"""Pure functions from an :class:`Outcome` (or the served state) to response bodies.

No I/O here: ``/v1/align``'s response, the OpenAI completion objects, their SSE chunks and
the ``/v1/rewards`` listing are built from values alone, so each is tested without a server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from iama.modelcard import ModelCard
from iama.rewards import RewardSet, available_rewards
from iama_server.schemas import AlignmentInfo, AlignResponse, Candidate, RewardScore, Timings, Usage, new_id, now
from iama_server.service import Outcome


def usage(outcome: Outcome) -> Usage:
    """Prompt tokens once, and the completion tokens of *all* N candidates (all were generated)."""
    p, c = outcome.generation.prompt_tokens, outcome.completion_tokens
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


def scores_of(outcome: Outcome, i: int) -> dict[str, RewardScore]:
    return {k: RewardScore(raw=float(v[i]), normalized=float(outcome.normalized[k][i])) for k, v in outcome.raw.items()}


def align_response(outcome: Outcome, *, model: str, return_candidates: bool, total_s: float) -> AlignResponse:
    call, cands = outcome.call, outcome.generation.candidates
    weighted = outcome.weighted
    assert weighted is not None, "/v1/align always scores"
    i = outcome.chosen[0]
    candidates = None
    if return_candidates:
        candidates = [
            Candidate(
                index=j,
                text=c.text,
                scores=scores_of(outcome, j),
                weighted_score=float(weighted[j]),
                chosen=j == i,
                finish_reason=c.finish_reason,
                completion_tokens=c.token_count,
            )
            for j, c in enumerate(cands)
        ]
    return AlignResponse(
        id=new_id("align"),
        created=now(),
        model=model,
        text=cands[i].text,
        chosen_index=i,
        finish_reason=cands[i].finish_reason,
        algorithm=call.algorithm,
        budget=call.budget,
        alignment_temperature=call.tau if call.algorithm == "soft_bon" else None,
        reward_weights=call.weights or {},
        weighted_score=float(weighted[i]),
        scores=scores_of(outcome, i),
        kl_bound=outcome.kl_bound,
        candidates=candidates,
        usage=usage(outcome),
        timings=Timings(
            queue_s=outcome.queue_s,
            generation_s=outcome.generation_s,
            scoring_s=outcome.scoring_s,
            total_s=total_s,
        ),
    )


def alignment_info(outcome: Outcome, i: int) -> dict[str, Any] | None:
    """IAMA's extra field on each OpenAI choice; ``None`` for plain generation."""
    if outcome.weighted is None:
        return None
    return AlignmentInfo(
        weighted_score=float(outcome.weighted[i]),
        scores=scores_of(outcome, i),
        budget=outcome.call.budget,
        algorithm=outcome.call.algorithm,
        kl_bound=outcome.kl_bound,
    ).model_dump()


def openai_response(outcome: Outcome, *, chat: bool, model: str, response_id: str, created: int) -> dict[str, Any]:
    """A ``chat.completion`` or ``text_completion`` object, one choice per returned candidate."""
    choices = []
    for k, i in enumerate(outcome.chosen):
        c = outcome.generation.candidates[i]
        content = {"message": {"role": "assistant", "content": c.text}} if chat else {"text": c.text}
        choices.append(
            {
                "index": k,
                **content,
                "finish_reason": c.finish_reason,
                "logprobs": None,
                "alignment": alignment_info(outcome, i),
            }
        )
    return {
        "id": response_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(outcome).model_dump(),
    }


_PIECES = re.compile(r"\s*\S+\s*|\s+")


def stream_chunks(
    outcome: Outcome, *, chat: bool, model: str, response_id: str, created: int, include_usage: bool
) -> list[dict[str, Any]]:
    """OpenAI chunk objects for the already-selected completion, a word at a time.

    Selection needs all N candidates, so an aligned stream starts after generation and scoring.
    """
    c = outcome.generation.candidates[outcome.chosen[0]]
    obj = "chat.completion.chunk" if chat else "text_completion"
    base = {"id": response_id, "object": obj, "created": created, "model": model}

    def choice(delta: str | None, fin: str | None, role: bool = False) -> dict[str, Any]:
        if chat:
            d: dict[str, Any] = {"role": "assistant"} if role else {}
            if delta is not None:
                d["content"] = delta
            return {"index": 0, "delta": d, "finish_reason": fin, "logprobs": None}
        return {"index": 0, "text": delta or "", "finish_reason": fin, "logprobs": None}

    chunks = []
    if chat:
        chunks.append({**base, "choices": [choice("", None, role=True)]})
    chunks += [{**base, "choices": [choice(piece, None)]} for piece in _PIECES.findall(c.text)]
    chunks.append({**base, "choices": [choice(None if chat else "", c.finish_reason or "stop")]})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": usage(outcome).model_dump()})
    return chunks


def sse_events(chunks: list[dict[str, Any]]) -> Iterator[bytes]:
    """Server-sent events as OpenAI's clients read them, ending with ``[DONE]``."""
    for ch in chunks:
        yield f"data: {json.dumps(ch)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def rewards_listing(
    rewards: RewardSet,
    card: ModelCard | None,
    default_weights: dict[str, float] | None,
    limits: dict[str, int],
) -> dict[str, Any]:
    """``GET /v1/rewards``: what can be weighted, how it is normalised, what the model was
    meta-aligned for."""
    descriptions = available_rewards()
    data = []
    for name, spec in rewards.specs.items():
        fn = rewards.functions[name]
        data.append(
            {
                "name": name,
                "type": spec.type,
                "description": descriptions.get(spec.type, fn.description),
                "parameters": fn.params,
                "normalization": spec.stats.model_dump() if spec.stats else None,
            }
        )
    objective = card.objective if card else None
    return {
        "object": "list",
        "data": data,
        "default_reward_weights": default_weights,
        "meta_aligned_for": {
            "tasks": [t.model_dump() for t in objective.tasks] if objective else [],
            "aggregation": objective.aggregation.model_dump() if objective else None,
            "objective_type": card.objective_type if card else None,
            "base_model": card.base_model if card else None,
        },
        "limits": limits,
    }
