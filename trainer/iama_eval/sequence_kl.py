"""Sequence-level KL of a trained policy to its base, measured on held-out samples.

``KL[π‖π_ref] = E_{y~π}[log π(y|x) − log π_ref(y|x)]``, estimated from the policy's own samples
(the generated ids, EOS included when the completion ended itself: the sequence the sampler
drew). TRL logs a per-token k3 estimate on training prompts, one noisy batch per step; this is
the quantity the objective regularises, on prompts training never saw, with one log-ratio per
sample so that intervals can resample prompts. Logits are divided by the sampling temperature,
as TRL does for its KL; top-p/top-k truncation is not modelled (the presets use none).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from iama_trainer.sampling import render_prompt


def sequence_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: list[Any],
    ids: list[list[list[int]]],
    temperature: float = 1.0,
    batch_size: int = 32,
) -> np.ndarray:
    """(P, M): ``Σ_t log π(y_t | x, y_<t)`` of each sampled completion under ``model``."""
    import torch

    prompt_ids = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    rows = [(i, j, prompt_ids[i], seq) for i, group in enumerate(ids) for j, seq in enumerate(group)]
    out = np.zeros((len(ids), max((len(g) for g in ids), default=0)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(rows), batch_size):
                chunk = rows[s : s + batch_size]
                full = [list(p) + list(c) for _, _, p, c in chunk]
                width = max(len(f) for f in full)
                input_ids = torch.full((len(full), width), pad, dtype=torch.long)
                mask = torch.zeros((len(full), width), dtype=torch.long)
                for k, f in enumerate(full):  # right padding: positions stay those of the prompt
                    input_ids[k, : len(f)] = torch.tensor(f)
                    mask[k, : len(f)] = 1
                logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
                logp = torch.log_softmax(logits / temperature, dim=-1)
                for k, (i, j, p, c) in enumerate(chunk):
                    if not c:
                        continue
                    pos = torch.arange(len(p) - 1, len(p) + len(c) - 1, device=logp.device)  # predicts c
                    target = torch.tensor(c, device=logp.device)
                    out[i, j] = float(logp[k, pos, target].sum())
    finally:
        model.train(was_training)
    return out


def load_for_scoring(model_path: str) -> tuple[Any, Any]:
    """A model in float32 (log-probabilities are compared across models) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if torch.cuda.is_available():
        model.to("cuda")
    return model, tok
