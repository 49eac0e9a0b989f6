"""Reward normalisation statistics measured on the *base* model's own samples.

They make reward weights comparable across rewards, and they are what the server uses to
normalise scores for this model, so they are stored in iama.json.
"""

from __future__ import annotations

from typing import Any

import torch

from iama.rewards import RewardSet, RewardStats, fit_stats
from iama_trainer.data import prompt_text


@torch.no_grad()
def sample_completions(
    model: Any,
    tokenizer: Any,
    prompts: list[Any],
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_prompts: int = 8,
) -> list[list[str]]:
    """HF generate (left-padded batches); returns the completions of each prompt."""
    out: list[list[str]] = []
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(prompts), batch_prompts):
            chunk = prompts[s : s + batch_prompts]
            texts = [
                tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                if not isinstance(p, str)
                else p
                for p in chunk
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            gen = model.generate(
                **enc,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                num_return_sequences=samples_per_prompt,
                pad_token_id=tokenizer.pad_token_id,
            )
            decoded = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for i in range(len(chunk)):
                out.append(decoded[i * samples_per_prompt : (i + 1) * samples_per_prompt])
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return out


def measure_reward_stats(
    model: Any,
    tokenizer: Any,
    prompts: list[Any],
    rewards: RewardSet,
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> dict[str, RewardStats]:
    groups = sample_completions(model, tokenizer, prompts, samples_per_prompt, max_new_tokens, temperature, top_p)
    flat_prompts = [prompt_text(p) for p, g in zip(prompts, groups, strict=True) for _ in g]
    flat = [c for g in groups for c in g]
    scores = rewards.score(flat_prompts, flat)
    return {name: fit_stats(v) for name, v in scores.items()}
