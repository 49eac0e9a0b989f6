"""``iama probe CONFIG``: measure the base model before training on it, and predict the optimum.

A reward's target that the base never samples cannot be learned, and a cap that most samples
hit changes what a length reward rewards. So before any training, sample the config's base
model on its prompts at a generous cap and report what the rewards will see: the completion
lengths (with the fraction cut at the cap), each reward's distribution, and for rewards that
depend on a completion only through one scalar (length, the answered number) that scalar's
distribution. When every task's reward is such a function of one shared scalar, the exact
KL-regularised optima of IAMA and of linear GRPO on the base's marginal follow
(:mod:`iama.optimum`), at the config's β and at given KLs: the prediction training is
compared against.

Writes ``probe.json`` (summary, prediction and every sample's scalar, length and rewards) and
``probe.png`` (histograms, predicted optima overlaid). A command: sampling and scoring come
from :mod:`iama_eval.samples`, the prediction from :mod:`iama_eval.prediction`, the summaries
from :mod:`iama_eval.distributions`, the figure from :mod:`iama_eval.plots`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from iama.files import atomic_write_json
from iama.models import resolve_model
from iama.rewards.normalization import MIN_STD, degenerate_warning, fit_stats
from iama_eval.config import GenerationSpec
from iama_eval.distributions import describe, json_values
from iama_eval.plots import plot_probe
from iama_eval.prediction import predict, shared_scalar
from iama_eval.samples import scoring_setup
from iama_trainer.config import TrainConfig

log = logging.getLogger("iama.probe")

TRUNCATION_WARNING = 0.05


def probe(
    cfg: TrainConfig,
    output_dir: Path,
    samples_per_prompt: int = 16,
    max_tokens: int | None = None,
    engine: str = "auto",
    kls: list[float] | None = None,
    budgets: list[int] | None = None,
) -> dict[str, Any]:
    """Sample the base, describe what the rewards see, predict the optima; write JSON + PNG."""
    output_dir.mkdir(parents=True, exist_ok=True)
    cap = max_tokens or 2 * cfg.max_completion_length
    budgets = budgets or [1, 2, 4, 8, 16]
    model_path = resolve_model(cfg.model)
    setup = scoring_setup(cfg.prompts, cfg.rewards, model_path, engine)
    prompts, rewards = setup.prompts, setup.rewards
    spec = GenerationSpec(max_tokens=cap, sampling=cfg.sampling, seed=cfg.seed)
    gen, raw = setup.sample_and_score(
        model_path, [str(p) for p in prompts], samples_per_prompt, spec, output_dir / "generations.json"
    )  # raw: (P, M) per reward
    lengths = np.asarray(gen.token_lengths, dtype=np.float64)
    truncated = lengths >= cap
    flat = [c for g in gen.completions for c in g]
    counts = [int(n) for g in gen.token_lengths for n in g]
    scalars = {name: fn.scalar(flat, counts) for name, fn in rewards.scalar_rewards().items()}  # name -> (P·M,)
    stats = {n: fit_stats(v) for n, v in raw.items()}
    rewards = rewards.with_stats(stats)

    task_names = sorted({n for t in cfg.objective.tasks for n in t.weights})
    normalized = cfg.normalization.enabled
    warnings = [w for n in task_names if (w := degenerate_warning(n, raw[n], normalized)) is not None]
    warnings += [
        f"reward {n!r} is constant on the base samples: it gives GRPO no signal (advantages are 0)"
        for n in task_names
        if float(np.std(raw[n])) <= MIN_STD
    ]
    if truncated.mean() > TRUNCATION_WARNING:
        warnings.append(
            f"{truncated.mean():.0%} of base samples are cut at the cap of {cap} tokens: the rewards score a "
            "prefix, not a finished answer (a length reward scores the cap); raise the cap or pick a task "
            "whose answers end by themselves"
        )
    summary: dict[str, Any] = {
        "model": cfg.model,  # as configured ("default", an id, a path): no path of this machine
        "prompts": len(prompts),
        "samples_per_prompt": samples_per_prompt,
        "max_tokens": cap,
        "engine": setup.engine,
        "sampling": cfg.sampling.model_dump(),
        "length": describe(lengths.reshape(-1)) | {"truncated_fraction": float(truncated.mean())},
        "length_untruncated": describe(lengths[~truncated]),
        "rewards": {n: describe(v.reshape(-1)) | {"params": rewards.specs[n].params} for n, v in raw.items()},
        "scalars": {n: describe(v) | {"scalar": rewards.scalar_rewards()[n].scalar_name} for n, v in scalars.items()},
    }
    shared = shared_scalar(rewards, task_names)
    if shared is not None:
        x = scalars[task_names[0]]
        for name in task_names:  # targets the base never comes near cannot be learned
            target = rewards.specs[name].params.get("target")
            finite = x[np.isfinite(x)]
            if (
                target is not None
                and finite.size
                and not (np.quantile(finite, 0.01) <= target <= np.quantile(finite, 0.99))
            ):
                warnings.append(
                    f"reward {name!r}: target {target} lies outside the base's 1–99 % range of {shared} "
                    f"[{np.quantile(finite, 0.01):g}, {np.quantile(finite, 0.99):g}]"
                )
        summary["prediction"] = predict(cfg, rewards, x, kls or [], budgets) | {"scalar": shared}
    summary["warnings"] = warnings
    for w in warnings:
        log.warning("%s", w)
    summary["samples"] = {
        "prompt_index": [i for i, g in enumerate(gen.completions) for _ in g],
        "tokens": counts,
        "truncated": truncated.reshape(-1).tolist(),
        "scalars": {n: json_values(s) for n, s in scalars.items()},
        "rewards": {n: v.reshape(-1).tolist() for n, v in raw.items()},
        "completions": flat,
    }
    summary["figure"] = plot_probe(summary, output_dir / "probe.png").name  # beside probe.json
    atomic_write_json(output_dir / "probe.json", summary)
    return summary
