"""Sampling M completions per prompt from each model, cached on disk so evaluation resumes.

A model path, the prompts, M and a :class:`~iama_eval.config.GenerationSpec` go in;
:class:`Generations` (texts, token lengths, token ids per prompt) come out, from vLLM or HF
``generate``. The cache key covers everything that changes the samples (model weights,
prompts, M, sampling params, seed, engine, dtype); a finished model's generations are never
recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iama.dtypes import Dtype, choose_dtype, torch_dtype
from iama.files import atomic_write_json
from iama.sampling import SamplingSettings, generated_tokens
from iama.vllm_settings import vllm_engine_kwargs
from iama_eval.config import GenerationSpec
from iama_trainer.sampling import Sampled, eos_token_ids, hf_sample, render_prompt, stop_token_ids

log = logging.getLogger("iama.eval")


@dataclass
class Generations:
    prompts: list[str]
    completions: list[list[str]]  # per prompt, M completions
    token_lengths: list[list[int]]  # generated tokens without the EOS: max_tokens means truncated
    token_ids: list[list[list[int]]]  # generated ids, with the EOS when the completion stopped itself


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def weights_fingerprint(model_path: str) -> str:
    """Identifies the weights behind a path: a retrain into the same directory changes it.

    Size and modification time of every weight file plus ``config.json``: cheap (no reading
    of gigabytes) and changed by any rewrite. A hub id is its own fingerprint.
    """
    root = Path(model_path)
    if not root.is_dir():
        return model_path
    parts = [
        f"{p.relative_to(root)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in sorted(root.rglob("*"))
        if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cache_key(
    model_path: str,
    prompts: list[Any],
    m: int,
    max_tokens: int,
    sampling: SamplingSettings,
    seed: int,
    engine: str,
    dtype: str = "auto",
) -> str:
    weights = weights_fingerprint(model_path)
    blob = json.dumps(
        # "lengths-v2": token lengths exclude the EOS since this version; older caches recount
        [model_path, weights, prompts, m, max_tokens, sampling.model_dump(), seed, engine, dtype, "lengths-v2"],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_cached(path: Path, key: str) -> Generations | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("key") != key:
        return None
    return Generations(data["prompts"], data["completions"], data["token_lengths"], data["token_ids"])


def save_cached(path: Path, key: str, gen: Generations) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "key": key,
        "prompts": gen.prompts,
        "completions": gen.completions,
        "token_lengths": gen.token_lengths,
        "token_ids": gen.token_ids,
    }
    atomic_write_json(path, data, indent=None)


def sample_vllm(
    model_path: str, prompts: list[Any], m: int, max_tokens: int, sampling: SamplingSettings, seed: int
) -> Sampled:
    import gc

    from vllm import LLM, SamplingParams

    llm = LLM(model=model_path, seed=seed, **vllm_engine_kwargs())
    try:
        tok = llm.get_tokenizer()
        stops = stop_token_ids(tok, sampling)
        outs = llm.generate(
            [render_prompt(tok, p) for p in prompts],
            # the stop token stays in the text, as in the ids and in HF's and TRL's samples
            SamplingParams(
                n=m,
                max_tokens=max_tokens,
                seed=seed,
                stop_token_ids=stops,
                include_stop_str_in_output=True,
                **sampling.vllm(),
            ),
            use_tqdm=True,
        )
        eos = eos_ids_of(model_path, tok, sampling)
        ordered = [sorted(r.outputs, key=lambda o: o.index) for r in outs]
        texts = [[o.text for o in group] for group in ordered]
        lens = [[generated_tokens(o.token_ids, eos) for o in group] for group in ordered]
        ids = [[list(o.token_ids) for o in group] for group in ordered]
    finally:
        # Stop the engine-core process now rather than at interpreter exit: the next model needs the memory.
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    return Sampled(texts, lens, ids)


def eos_ids_of(model_path: str, tokenizer: Any, sampling: SamplingSettings) -> set[int]:
    """:func:`iama_trainer.sampling.eos_token_ids` for a model known by its path (vLLM's)."""
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(model_path)
    except OSError:  # no generation_config.json
        config = None
    return eos_token_ids(config, tokenizer, sampling)


def sample_hf(
    model_path: str,
    prompts: list[Any],
    m: int,
    max_tokens: int,
    sampling: SamplingSettings,
    seed: int,
    dtype: Dtype = "auto",
) -> Sampled:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_path)
    choice = choose_dtype(dtype)  # auto: bf16 on a GPU or a CPU with native bf16, else fp32
    log.info("HF sampling dtype: %s", choice.reason)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype(choice))
    if torch.cuda.is_available():
        model.to("cuda")
    return hf_sample(model, tok, prompts, m, max_tokens, sampling, progress=f"sampling {model_path}")


def generate(
    model_path: str,
    prompts_text: list[str],
    prompts_trl: list[Any],
    m: int,
    spec: GenerationSpec,
    engine: str,
    cache: Path,
) -> Generations:
    """M samples per prompt of ``model_path`` (``prompts_trl``: what the chat template gets),
    from ``cache`` when its key matches, else sampled and written there."""
    key = cache_key(model_path, prompts_trl, m, spec.max_tokens, spec.sampling, spec.seed, engine, spec.dtype)
    hit = load_cached(cache, key)
    if hit is not None:
        return hit
    if engine == "vllm":
        texts, lens, ids = sample_vllm(model_path, prompts_trl, m, spec.max_tokens, spec.sampling, spec.seed)
    else:
        # a sweep's KL path samples the policy in its training dtype
        texts, lens, ids = sample_hf(model_path, prompts_trl, m, spec.max_tokens, spec.sampling, spec.seed, spec.dtype)
    gen = Generations(prompts_text, texts, lens, ids)
    save_cached(cache, key, gen)
    return gen
