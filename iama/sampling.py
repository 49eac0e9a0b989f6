"""One sampling distribution, spelt for each sampler that draws from it.

Reward statistics (calibration), training rollouts (TRL: HF ``generate`` or vLLM) and
evaluation must all sample the same distribution, or the statistics describe a different
policy from the one trained and the evaluation measures a third. Samplers disagree on their
defaults: transformers' ``generate`` applies ``top_k=50`` unless told otherwise, TRL and vLLM
use no top-k. So every setting is passed explicitly, from this one object.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SamplingSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0, description="0: no top-k filtering (TRL's and vLLM's default)")
    min_p: float = Field(default=0.0, ge=0, le=1, description="0: off")
    repetition_penalty: float = Field(default=1.0, gt=0)

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
