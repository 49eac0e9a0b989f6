"""Pure functions from an :class:`Outcome` (or the served state) to response bodies.

No I/O here: ``/v1/align``'s response, the OpenAI completion objects, their SSE chunks and
the ``/v1/models`` and ``/v1/rewards`` listings are built from values alone, so each is tested
without a server.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from iama.modelcard import ModelCard
from iama.rewards import RewardSet, available_rewards
from iama_server.adapters import ServedModel
from iama_server.engine import Generation, Logprobs, TokenLogprob
from iama_server.outcome import Outcome
from iama_server.schemas import (
    AlignmentInfo,
    AlignResponse,
    Candidate,
    CheckpointReport,
    EarlyRejectionReport,
    RewardScore,
    Timings,
    Usage,
    VoteReport,
)


def now() -> int:
    """``created``: seconds since the epoch, as OpenAI's objects carry it."""
    return int(time.time())


def usage(outcome: Outcome) -> Usage:
    """Prompt tokens once, the completion tokens of *all* N candidates (all were generated),
    and the judge's prompt tokens (rubrics), which the total counts too."""
    p, c, j = outcome.generation.prompt_tokens, outcome.completion_tokens, outcome.judge_tokens
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c + j, judge_tokens=j)


def summed_usage(parts: list[Usage]) -> Usage:
    return Usage(
        prompt_tokens=sum(u.prompt_tokens for u in parts),
        completion_tokens=sum(u.completion_tokens for u in parts),
        total_tokens=sum(u.total_tokens for u in parts),
        judge_tokens=sum(u.judge_tokens for u in parts),
    )


def scores_of(outcome: Outcome, i: int) -> dict[str, RewardScore]:
    """Candidate i's scores; for one stopped by early rejection, only those of the rewards that
    judged its partial text (a length reward's score of half a text means nothing)."""
    names = outcome.search.partial_rewards if i in outcome.search.rejected else list(outcome.raw)
    return {k: RewardScore(raw=float(outcome.raw[k][i]), normalized=float(outcome.normalized[k][i])) for k in names}


def weighted_of(outcome: Outcome, i: int) -> float:
    """The score that decided: the partial score at rejection for a stopped candidate."""
    assert outcome.weighted is not None
    rejection = outcome.search.rejected.get(i)
    return rejection.score if rejection is not None else float(outcome.weighted[i])


def early_rejection_report(outcome: Outcome) -> EarlyRejectionReport | None:
    search = outcome.search
    if search.checkpoints is None:
        return None
    generated = outcome.completion_tokens
    max_tokens = outcome.call.sampling.max_tokens
    return EarlyRejectionReport(
        checkpoints=[
            CheckpointReport(tokens=c.tokens, rewards=search.partial_rewards, kept=c.kept, rejected=c.rejected)
            for c in search.checkpoints
        ],
        keep=outcome.call.early_rejection.keep if outcome.call.early_rejection else 1.0,
        candidates_started=len(outcome.generation.candidates),
        generated_tokens=generated,
        plain_bon_tokens_bound=generated + sum(max_tokens - r.tokens for r in search.rejected.values()),
    )


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
                weighted_score=weighted_of(outcome, j),
                chosen=j == i,
                finish_reason=c.finish_reason,
                completion_tokens=c.token_count,
                rejected_at=r.tokens if (r := outcome.search.rejected.get(j)) is not None else None,
            )
            for j, c in enumerate(cands)
        ]
    return AlignResponse(
        id=call.request_id,
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
        early_rejection=early_rejection_report(outcome),
        budget_spent=outcome.search.budget_spent,
        eligible=outcome.eligible,
        vote=vote_report(outcome),
        usage=usage(outcome),
        timings=Timings(
            queue_s=outcome.queue_s,
            generation_s=outcome.generation_s,
            scoring_s=outcome.scoring_s,
            total_s=total_s,
        ),
    )


def vote_report(outcome: Outcome) -> VoteReport | None:
    v = outcome.vote
    return None if v is None else VoteReport(answer=v.answer, counts=v.counts)


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
        early_rejection=early_rejection_report(outcome),
        budget_spent=outcome.search.budget_spent,
        eligible=outcome.eligible,
        vote=vote_report(outcome),
    ).model_dump(exclude_none=True)


def completion_logprobs(entries: Logprobs, offset: int = 0) -> dict[str, Any]:
    """The legacy completions shape: parallel lists of tokens, their log-probs, the top
    alternatives (with the token itself, as vLLM's server gives them) and character offsets."""
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [None if e.logprob is None else {**dict(e.top), e.token: e.logprob} for e in entries],
        "text_offset": offsets,
    }


def _chat_token(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def chat_logprobs(entries: Logprobs) -> dict[str, Any]:
    """The chat shape: one object per generated token with its bytes and top alternatives."""
    content = []
    for e in entries:
        assert e.logprob is not None, "generated tokens are always scored"
        top = [_chat_token(t, lp) for t, lp in e.top]
        content.append({**_chat_token(e.token, e.logprob), "top_logprobs": top})
    return {"content": content, "refusal": None}


def choice_logprobs(c: Generation, *, chat: bool, prompt: Logprobs | None = None) -> dict[str, Any] | None:
    """A choice's ``logprobs`` when they were asked for: the chosen candidate's tokens, after
    the prompt's (completions' ``echo``)."""
    if c.logprobs is None:
        return None
    return piece_logprobs(c.logprobs if chat else (prompt or ()) + c.logprobs, chat=chat)


def openai_response(
    outcomes: list[Outcome], *, chat: bool, model: str, response_id: str, created: int
) -> dict[str, Any]:
    """A ``chat.completion`` or ``text_completion`` object: per prompt (in order), one choice
    per returned candidate, numbered across prompts as OpenAI does; usage summed."""
    choices: list[dict[str, Any]] = []
    for outcome in outcomes:
        echo = outcome.call.echo
        prompt_lps = outcome.generation.prompt_logprobs if echo is not None else None
        for i in outcome.chosen:
            c = outcome.generation.candidates[i]
            text = c.text if echo is None else echo + c.text
            content = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            choices.append(
                {
                    "index": len(choices),
                    **content,
                    "finish_reason": c.finish_reason,
                    "logprobs": choice_logprobs(c, chat=chat, prompt=prompt_lps),
                    "alignment": alignment_info(outcome, i),
                }
            )
    total = summed_usage([usage(o) for o in outcomes])
    return {
        "id": response_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": total.model_dump(),
    }


_PIECES = re.compile(r"\s*\S+\s*|\s+")


def stream_chunk(
    base: dict[str, Any],
    *,
    chat: bool,
    text: str | None,
    finish: str | None = None,
    role: bool = False,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One OpenAI chunk object: a chat delta or a text piece of choice 0, with the log-probs of
    the piece's tokens when they were asked for."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]}
    return {**base, "choices": [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": logprobs}]}


def piece_logprobs(entries: Logprobs, *, chat: bool, offset: int = 0) -> dict[str, Any]:
    return chat_logprobs(entries) if chat else completion_logprobs(entries, offset)


def _token_pieces(text: str, logprobs: tuple[TokenLogprob, ...]) -> list[tuple[str, Logprobs]]:
    """The text a token at a time with each token's log-probs; in one piece when the tokens'
    own strings do not spell the text (a multi-byte character split across tokens)."""
    if "".join(e.token for e in logprobs) == text:
        return [(e.token, (e,)) for e in logprobs]
    return [(text, logprobs)]


def chunk_base(*, chat: bool, model: str, response_id: str, created: int) -> dict[str, Any]:
    obj = "chat.completion.chunk" if chat else "text_completion"
    return {"id": response_id, "object": obj, "created": created, "model": model}


def usage_chunk(base: dict[str, Any], u: Usage) -> dict[str, Any]:
    return {**base, "choices": [], "usage": u.model_dump()}


def stream_chunks(
    outcome: Outcome, *, chat: bool, model: str, response_id: str, created: int, include_usage: bool
) -> list[dict[str, Any]]:
    """OpenAI chunk objects for the already-selected completion, a word at a time (a token at a
    time with log-probs). ``streaming.py`` sends them once selection is done, and after a sole
    survivor's streamed text only their finish and usage chunks."""
    c = outcome.generation.candidates[outcome.chosen[0]]
    base = chunk_base(chat=chat, model=model, response_id=response_id, created=created)
    chunks = [stream_chunk(base, chat=True, text="", role=True)] if chat else []
    echo = outcome.call.echo
    if echo is not None:
        prompt = outcome.generation.prompt_logprobs
        lps = None if prompt is None or c.logprobs is None else piece_logprobs(prompt, chat=False)
        chunks.append(stream_chunk(base, chat=False, text=echo, logprobs=lps))
    if c.logprobs is None:
        chunks += [stream_chunk(base, chat=chat, text=piece) for piece in _PIECES.findall(c.text)]
    else:  # a token at a time, each with its log-probs
        at = len(echo or "")
        for piece, entries in _token_pieces(c.text, c.logprobs):
            chunks.append(
                stream_chunk(base, chat=chat, text=piece, logprobs=piece_logprobs(entries, chat=chat, offset=at))
            )
            at += len(piece)
    chunks.append(stream_chunk(base, chat=chat, text=None if chat else "", finish=c.finish_reason or "stop"))
    if include_usage:
        chunks.append(usage_chunk(base, usage(outcome)))
    return chunks


def sse(chunk: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(chunk)}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"  # the last event of every stream, as OpenAI's clients expect


def model_card(model: ServedModel, base: str) -> dict[str, Any]:
    """One ``/v1/models`` entry, as vLLM lists a LoRA adapter: ``parent`` is its base's id."""
    parent = base if model.adapter is not None else None
    return {"id": model.name, "object": "model", "created": 0, "owned_by": "iama", "root": model.root, "parent": parent}


def rewards_listing(
    rewards: RewardSet,
    card: ModelCard | None,
    default_weights: dict[str, float] | None,
    limits: dict[str, int],
    ready: set[str],
) -> dict[str, Any]:
    """``GET /v1/rewards``: what can be weighted, how it is normalised, whether it is warm
    (``ready``), what the model was meta-aligned for."""
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
                "ready": name in ready,
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
