"""HF ``generate`` sampling of M completions per prompt: rollouts for calibration (CPU/GPU)
and the eval fallback when vLLM is not installed."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from iama.sampling import SamplingSettings, generated_tokens


def render_prompt(tokenizer: Any, prompt: Any) -> str:
    """A chat prompt (list of messages) through the chat template; a string as is."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def eos_token_ids(generation_config: Any, tokenizer: Any, sampling: SamplingSettings) -> set[int]:
    """The ids that end a completion, as TRL's generation masks them and vLLM stops on them:
    every EOS the model's generation config declares (e.g. an end-of-turn token), the
    tokenizer's, and the sampling's stop tokens (:attr:`SamplingSettings.stop`), which end a
    completion the same way. ``generation_config`` may be None (a model directory without one)."""
    declared = getattr(generation_config, "eos_token_id", None)
    ids = {int(i) for i in (declared if isinstance(declared, list) else [] if declared is None else [declared])}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    ids.update(stop_token_ids(tokenizer, sampling))
    return ids


def stop_token_ids(tokenizer: Any, sampling: SamplingSettings) -> list[int]:
    """:meth:`SamplingSettings.stop_token_ids` under ``tokenizer`` (no special tokens added)."""
    return sampling.stop_token_ids(lambda text: tokenizer.encode(text, add_special_tokens=False), tokenizer.decode)


class Sampled(NamedTuple):
    """M completions per prompt: text, generated token count (no EOS; the cap means truncated)
    and the generated ids (with the EOS when the completion stopped itself: the sequence whose
    probability the policy gave, which a sequence-level KL needs)."""

    texts: list[list[str]]
    lengths: list[list[int]]
    ids: list[list[list[int]]]


@torch.no_grad()
def hf_sample(
    model: Any,
    tokenizer: Any,
    prompts: list[Any],
    m: int,
    max_new_tokens: int,
    sampling: SamplingSettings,
    batch_prompts: int = 8,
    progress: str | None = None,
) -> Sampled:
    """Completions in left-padded batches (:class:`Sampled`); ``progress`` names a progress bar
    over the prompts (minutes of sampling on a CPU)."""
    from tqdm.auto import tqdm

    texts: list[list[str]] = []
    lengths: list[list[int]] = []
    ids: list[list[list[int]]] = []
    old_side, old_pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:  # batches need one (SmolLM2's GGUF tokenizer has none): EOS, masked out
        tokenizer.pad_token = tokenizer.eos_token
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_set = eos_token_ids(model.generation_config, tokenizer, sampling)
    eos = torch.tensor(sorted(eos_set), device=model.device)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc=progress, unit="prompt", disable=progress is None)
    try:
        for s in range(0, len(prompts), batch_prompts):
            chunk = prompts[s : s + batch_prompts]
            rendered = [render_prompt(tokenizer, p) for p in chunk]
            enc = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            out = model.generate(
                **enc,
                **sampling.hf_generate(),  # every setting explicit: generate's defaults (top_k=50) differ
                max_new_tokens=max_new_tokens,
                num_return_sequences=m,
                pad_token_id=pad,
                eos_token_id=sorted(eos_set),  # the model's EOS and the sampling's stop tokens
            )
            new = out[:, enc["input_ids"].shape[1] :]
            decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
            # each row up to its first EOS (padding after it), counted by the one rule
            ends = [torch.isin(row, eos).nonzero() for row in new]
            seqs = [row[: int(e[0]) + 1].tolist() if len(e) else row.tolist() for row, e in zip(new, ends, strict=True)]
            lens = [generated_tokens(seq, eos_set) for seq in seqs]
            for i in range(len(chunk)):
                texts.append(decoded[i * m : (i + 1) * m])
                lengths.append(lens[i * m : (i + 1) * m])
                ids.append(seqs[i * m : (i + 1) * m])
            bar.update(len(chunk))
    finally:
        bar.close()
        tokenizer.padding_side, tokenizer.pad_token = old_side, old_pad
        model.train(was_training)
    return Sampled(texts, lengths, ids)
