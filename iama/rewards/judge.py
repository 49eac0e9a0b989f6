"""``judge``: a rubric reward, scored by an LLM (:mod:`iama.judging` says how).

Three places the judge can run, by what the spec gives:

* neither ``model`` nor ``url``: the served model on the serving engine. Only an alignment
  server can score it (one batched engine request for a request's N answers, in the same
  engine round as nothing else: ``iama_server.judging``); :meth:`RubricJudge.score` refuses.
* ``model``: a Hugging Face causal LM in this process (``from_pretrained``: a path or a hub
  id), the exact log-probs of every rating token from one forward pass. What training and
  ``iama probe`` use.
* ``url``: any OpenAI-compatible server (vLLM, an iama server, a hosted API), one chat request
  per answer with ``max_tokens: 1``, ``logprobs`` and ``top_logprobs: 20``: the ratings among
  those 20 alternatives are read by their text. A judge prompted for one digit puts almost all
  its mass there; a rating outside the 20 counts as 0, and none at all gives 0.5.

A judge reward is not used on partial text (early rejection): a rubric about a whole answer
says little of its first tokens, and each checkpoint would cost an engine round trip.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from iama._arrays import FloatArray
from iama.dtypes import Dtype, choose_dtype
from iama.judging import expected_ratings, judge_messages, rating_of_alternatives, rating_token_ids, vocabulary
from iama.rewards.base import register
from iama.rewards.conversation import Prompt, reward_prompt
from iama.rewards.remote import RemoteRewardError, RemoteRewardModel

MAX_RUBRIC_CHARS = 4000
OPENAI_TOP_LOGPROBS = 20  # OpenAI's and vLLM's default limit
REMOTE_CONCURRENCY = 16


class JudgeNeedsEngine(RuntimeError):
    """A judge on the served model, asked to score outside an alignment server."""


@dataclass
class RubricJudge:
    rubric: str
    model: str | None = None  # a causal LM in this process (path or hub id)
    url: str | None = None  # an OpenAI-compatible server
    served_model: str | None = None  # url: the model name to ask for; default the server's first
    api_key: str | None = None
    timeout_s: float = 30.0
    batch_size: int = 8
    device: str | None = None
    dtype: Dtype = "auto"
    name: str = field(init=False)
    description: str = field(init=False)
    judges_partial_text: bool = field(default=False, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _lm: Any = field(default=None, init=False, repr=False)
    _tok: Any = field(default=None, init=False, repr=False)
    _ratings: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    _remote: RemoteRewardModel | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.rubric.strip():
            raise ValueError("rubric must not be empty")
        if len(self.rubric) > MAX_RUBRIC_CHARS:
            raise ValueError(f"rubric is {len(self.rubric)} characters; at most {MAX_RUBRIC_CHARS}")
        if self.model is not None and self.url is not None:
            raise ValueError("give the judge a model (in this process) or a url (a server), not both")
        if self.batch_size < 1 or self.timeout_s <= 0:
            raise ValueError("batch_size must be >= 1 and timeout_s > 0")
        where = self.model or self.url or "the served model"
        self.name = "judge"
        self.description = f"rubric judged by {where}: {self.rubric[:60]}"
        if self.url is not None:  # its HTTP plumbing: timeouts and one-line errors
            self._remote = RemoteRewardModel(
                self.url, model=self.served_model, timeout_s=self.timeout_s, api_key=self.api_key
            )

    @property
    def on_engine(self) -> bool:
        """Judged by the serving engine's own model (the spec gives no model or url)."""
        return self.model is None and self.url is None

    @property
    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rubric": self.rubric}
        if self.model is not None:
            out["model"] = self.model
        if self.url is not None:
            out |= {"url": self.url, "served_model": self.served_model, "timeout_s": self.timeout_s}
        return out

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> FloatArray:
        if len(prompts) != len(completions):
            raise ValueError("need one prompt per completion")
        if self.on_engine:
            raise JudgeNeedsEngine(
                "this judge rubric is scored by the serving engine; to score it elsewhere give it "
                "a model (a causal LM path) or a url (an OpenAI-compatible server)"
            )
        if not completions:
            return np.zeros(0)
        if self.url is not None:
            return self._score_remote(prompts, completions)
        return self._score_local(prompts, completions)

    # ------------------------------------------------------------------ in this process
    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from iama.rewards.neural import default_device

        assert self.model is not None
        device = self.device or default_device()
        dtype = choose_dtype(self.dtype, cuda=device.startswith("cuda"))
        tok = AutoTokenizer.from_pretrained(self.model)
        lm = AutoModelForCausalLM.from_pretrained(self.model, dtype=getattr(torch, dtype.dtype))
        self._ratings = rating_token_ids(vocabulary(lambda i: tok.decode([i]), len(tok)))
        self._lm, self._tok, self.device = lm.to(device).eval(), tok, device

    def prompt_ids(self, prompt: Prompt, completion: str) -> list[int]:
        """The judge's prompt for one answer, in the judge model's own chat template."""
        messages = judge_messages(self.rubric, reward_prompt(prompt), completion)
        ids = self._tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def _score_local(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> FloatArray:
        import torch

        with self._lock, torch.inference_mode():
            if self._lm is None:
                self._load()
            rows: list[dict[int, float]] = []
            ids = sorted(self._ratings)
            for s in range(0, len(completions), self.batch_size):
                pairs = zip(prompts[s : s + self.batch_size], completions[s : s + self.batch_size], strict=True)
                batch = [self.prompt_ids(p, c) for p, c in pairs]
                width = max(map(len, batch))
                pad = self._tok.pad_token_id if self._tok.pad_token_id is not None else 0
                # Left padding: every prompt's last token sits in the last column.
                input_ids = torch.tensor([[pad] * (width - len(b)) + b for b in batch], device=self.device)
                mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch], device=self.device)
                logits = self._lm(input_ids=input_ids, attention_mask=mask).logits[:, -1].float()
                lps = torch.log_softmax(logits, -1)[:, ids].cpu().numpy()
                rows += [dict(zip(ids, map(float, r), strict=True)) for r in lps]
        return expected_ratings(rows, self._ratings)

    # ------------------------------------------------------------------ over HTTP
    def _score_remote(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> FloatArray:
        """One chat request per answer, up to ``REMOTE_CONCURRENCY`` in flight (a serving
        engine batches them; sequential calls would pay N round trips)."""
        from concurrent.futures import ThreadPoolExecutor

        remote = self._remote
        assert remote is not None
        model = remote.served_model()  # also opens the shared client before the threads use it

        def rate(pair: tuple[Prompt, str]) -> float:
            body = {
                "model": model,
                "messages": judge_messages(self.rubric, reward_prompt(pair[0]), pair[1]),
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": OPENAI_TOP_LOGPROBS,
            }
            answer = remote.post("/v1/chat/completions", body)
            try:
                top = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
                alternatives = [(str(t["token"]), float(t["logprob"])) for t in top]
            except (KeyError, IndexError, TypeError, ValueError):
                raise RemoteRewardError(f"judge server {remote.url} returned no log-probs") from None
            return rating_of_alternatives(alternatives)

        with ThreadPoolExecutor(min(REMOTE_CONCURRENCY, len(completions))) as pool:
            return np.asarray(list(pool.map(rate, zip(prompts, completions, strict=True))), dtype=np.float64)


@register("judge", "a rubric scored by an LLM judge: the expected 0-9 rating from one step's log-probs, in [0, 1]")
def _judge_factory(**params: Any) -> RubricJudge:
    return RubricJudge(**params)
