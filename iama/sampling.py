"""One sampling distribution, spelt for each sampler that draws from it.

Reward statistics (calibration), training rollouts (TRL: HF ``generate`` or vLLM) and
evaluation must all sample the same distribution, or the statistics describe a different
policy from the one trained and the evaluation measures a third. Samplers disagree on their
defaults: transformers' ``generate`` applies ``top_k=50`` unless told otherwise, TRL and vLLM
use no top-k. So every setting is passed explicitly, from this one object.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer


class SamplingSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0, description="0: no top-k filtering (TRL's and vLLM's default)")
    min_p: float = Field(default=0.0, ge=0, le=1, description="0: off")
    repetition_penalty: float = Field(default=1.0, gt=0)
    stop: tuple[str, ...] = Field(
        default=(),
        description="texts that end a completion as the EOS does, each one token of the model's "
        "vocabulary (vLLM's stop_token_ids): e.g. ['.', '!', '?'] ends an answer at its first sentence",
    )

    @model_serializer(mode="wrap")
    def _omit_unset_stop(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """No ``stop`` written when there is none: records made before it existed (the cache
        keys of generations, a sweep's evaluation settings) still compare equal."""
        out: dict[str, Any] = handler(self)
        if not self.stop:
            out.pop("stop", None)
        return out

    def stop_token_ids(self, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str]) -> list[int]:
        """The ids of :attr:`stop` under a tokenizer's ``encode`` (without special tokens),
        each checked to ``decode`` back to its text: a SentencePiece tokenizer may encode "."
        alone as "▁." (with a space), which ordinary sentence ends never produce.

        One token each, because every sampler can stop on a token (transformers' ``generate``
        on its ``eos_token_id`` list, vLLM on ``stop_token_ids``, TRL's mask on its EOS ids)
        and the stopping token then belongs to the completion the policy gave a probability
        to; a text stop could end inside a token, which no sampler's probabilities describe.
        """
        ids = []
        for text in self.stop:
            found = encode(text)
            if len(found) != 1:
                raise ValueError(
                    f"sampling.stop: {text!r} is {len(found)} tokens of this model's tokenizer; "
                    "each stop must be one token"
                )
            if decode([int(found[0])]) != text:
                raise ValueError(
                    f"sampling.stop: {text!r} encodes alone as {decode([int(found[0])])!r}, a token that "
                    "does not end text the way it does; pick a stop that is its own token"
                )
            ids.append(int(found[0]))
        return ids

    def hf_generate(self) -> dict[str, Any]:
        """Keyword arguments for transformers' ``generate``: TRL's, which it passes on to
        ``generate`` for its own HF rollouts, plus sampling switched on."""
        return {"do_sample": True, **self.trl()}

    def vllm(self) -> dict[str, Any]:
        """Keyword arguments for vLLM's ``SamplingParams``."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
        }

    def trl(self) -> dict[str, Any]:
        """Keyword arguments for TRL's ``GRPOConfig`` (its rollouts, HF or vLLM)."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,  # explicit: transformers' generate would otherwise apply 50
            "min_p": self.min_p or None,
            "repetition_penalty": self.repetition_penalty,
        }


def generated_tokens(ids: Sequence[int], eos_ids: Collection[int]) -> int:
    """Tokens a completion was generated with, not counting the EOS that ended it.

    This is the length a token-length reward scores and the one the cap applies to: a
    completion cut at ``max_tokens`` counts ``max_tokens`` and one that stopped itself fewer.
    Samplers disagree on whether the EOS is in the ids (TRL's and vLLM's are, decoded text is
    not); re-tokenising the text instead can count one more or less than was generated.
    """
    n = len(ids)
    return n - 1 if n and int(ids[-1]) in eos_ids else n
