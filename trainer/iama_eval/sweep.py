"""``iama sweep``: IAMA vs linear GRPO across aggregation weights and seeds, evaluated with and
without best-of-N, with bootstrap confidence intervals: the comparison the paper makes.

Every run starts from one training config (``base``) and differs only in the objective type,
the aggregation weights over its tasks and the seed; all runs share the config's KL control,
so an adaptive target gives KL-matched runs. Each trained model (and the base model) is
sampled ``samples_per_prompt`` times on held-out prompts; every sample's raw rewards are kept
(``scores.json``), and each task's value under its own algorithm with budget N is estimated
per prompt (exactly for BoN, as ``iama eval`` does). Intervals resample prompts and seeds.

Runs are trained one after another in this process and skipped when their model exists, so an
interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import csv
import gc
import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from iama.algorithms import bon_selection_weights, soft_bon_subset_weights
from iama.configfile import read_yaml, validate_config
from iama.objective import Aggregation, ObjectiveType, Task, aggregation_value
from iama.rewards import RewardSet, bind_tokenizer, weighted_score
from iama.sampling import SamplingSettings
from iama_trainer.config import PromptsConfig, TrainConfig, load_config

log = logging.getLogger("iama.sweep")


class SweepEval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompts: PromptsConfig = PromptsConfig(limit=16)
    samples_per_prompt: int = Field(default=16, ge=1)
    budgets: list[int] = [1, 4, 8, 16]
    max_tokens: int = Field(default=64, ge=1)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    engine: str = Field(default="auto", pattern="^(auto|vllm|hf)$")
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="HF sampling dtype; float32 samples a CPU-trained policy exactly, which a "
        "sequence KL measured on the samples needs",
    )
    steps: list[int] | None = Field(
        default=None, description="with snapshots: evaluate only the snapshots of these steps (default: all)"
    )
    kl_samples: int | None = Field(
        default=None,
        ge=1,
        description="with snapshots: measure the KL on the first this many samples of each prompt "
        "(each costs two forward passes; default: all)",
    )
    snapshots: bool = Field(
        default=False,
        description="evaluate every weight snapshot of every run (set snapshot_steps) with its "
        "sequence KL to the base, for comparisons at matched KL (iama_eval.kl_path)",
    )


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = Field(description="training config: a preset name or a YAML path")
    output_dir: Path = Path("runs/sweep")
    weights: list[list[float]] = Field(description="aggregation weights over the base config's tasks, one per point")
    objective_types: list[ObjectiveType] = ["iama", "linear"]
    seeds: list[int] = [0, 1, 2]
    set: dict[str, Any] = Field(default_factory=dict, description="overrides for every run (dotted keys)")
    eval: SweepEval = SweepEval()
    bootstrap: int = Field(default=1000, ge=10)
    include_base: bool = Field(default=True, description="evaluate the untrained base model too")

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        if not self.weights or not self.seeds or not self.objective_types:
            raise ValueError("weights, seeds and objective_types must not be empty")
        if max(self.eval.budgets) > self.eval.samples_per_prompt:
            raise ValueError("eval.samples_per_prompt must be >= the largest budget")
        return self


def load_sweep_config(path: str) -> SweepConfig:
    return validate_config(SweepConfig, read_yaml(path), f"invalid sweep config {path}")


def run_label(objective_type: str, weights: list[float], seed: int) -> str:
    return f"{objective_type}_w{'-'.join(f'{w:g}' for w in weights)}_s{seed}"


def run_configs(cfg: SweepConfig) -> dict[str, TrainConfig]:
    """One training config per (objective type, weights, seed), seed by seed: a sweep cut short
    has every method at its first seeds rather than one method at all of them."""
    out: dict[str, TrainConfig] = {}
    for seed in cfg.seeds:
        for weights in cfg.weights:
            for objective_type in cfg.objective_types:
                label = run_label(objective_type, weights, seed)
                overrides = {
                    **cfg.set,
                    "output_dir": str(cfg.output_dir / "runs" / label),
                    "objective.type": objective_type,
                    "objective.aggregation.weights": list(weights),
                    "seed": seed,
                }
                out[label] = load_config(cfg.base, overrides)
    return out


def train_all(cfg: SweepConfig, runs: dict[str, TrainConfig]) -> dict[str, Path]:
    from iama_trainer.run import train

    models = {}
    for label, run_cfg in runs.items():
        model = run_cfg.output_dir / "model"
        if not (model / "iama.json").is_file():
            log.info("training %s", label)
            train(run_cfg, resume=True)
            gc.collect()
            _free_gpu()
        models[label] = model
    return models


def _free_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def per_prompt_task_values(raw: dict[str, np.ndarray], tasks: list[Task], budgets: list[int], seed: int) -> np.ndarray:
    """(tasks, budgets, prompts): each task's reward of the completion its algorithm picks among
    N of a prompt's M samples, in expectation over which N (exact for BoN, Monte Carlo for
    soft BoN); N = 1 is the policy's own mean."""
    prompts = next(iter(raw.values())).shape[0]
    out = np.zeros((len(tasks), len(budgets), prompts))
    for i, task in enumerate(tasks):
        r = weighted_score(raw, task.weights)  # (prompts, M): raw rewards, the sweep's units
        for b, n in enumerate(budgets):
            for x in range(prompts):
                if task.algorithm == "bon":
                    w = bon_selection_weights(r[x], n)
                else:
                    w = soft_bon_subset_weights(r[x], n, task.tau, rng=seed + x)
                out[i, b, x] = float(np.dot(w, r[x]))
    return out


def bootstrap(values: np.ndarray, aggregation: Aggregation, draws: int, rng: np.random.Generator) -> dict[str, Any]:
    """Means of each task and g of those means (Eq. 1), with 95 % intervals from resampling
    seeds and prompts. ``values`` is (seeds, tasks, prompts)."""
    seeds, _, prompts = values.shape

    def stats(v: np.ndarray) -> np.ndarray:
        means = v.mean(axis=(0, 2))  # (tasks,)
        return np.append(means, aggregation_value(means, aggregation))

    point = stats(values)
    draws_ = np.stack(
        [stats(values[rng.integers(0, seeds, seeds)][:, :, rng.integers(0, prompts, prompts)]) for _ in range(draws)]
    )
    lo, hi = np.percentile(draws_, [2.5, 97.5], axis=0)
    return {"mean": point.tolist(), "ci95": list(zip(lo.tolist(), hi.tolist(), strict=True))}


def run_sweep(cfg: SweepConfig) -> dict[str, Any]:
    from iama.modelcard import load_model_card
    from iama.models import resolve_model
    from iama_eval.evaluate import score_generations
    from iama_eval.generate import generate
    from iama_eval.run import resolve_engine
    from iama_trainer.data import load_prompts, to_trl_prompt

    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    runs = run_configs(cfg)
    first = next(iter(runs.values()))
    base_path = resolve_model(first.model)
    models = {label: str(path) for label, path in train_all(cfg, runs).items()}
    if cfg.eval.snapshots:  # every point of the KL path instead of the final models alone
        from iama_eval.kl_path import evaluate_path

        evaluate_path(cfg, runs, base_path)
        return report(cfg)
    if cfg.include_base:
        models = {"base": base_path, **models}

    ev = cfg.eval
    engine = resolve_engine(ev.engine)
    prompts = load_prompts(ev.prompts)
    trl_prompts = [to_trl_prompt(p, ev.prompts) for p in prompts]
    rewards = RewardSet(bind_tokenizer(first.rewards, base_path))  # raw rewards: the sweep's units
    rewards.warm_up()
    scores: dict[str, dict[str, list[list[float]]]] = {}  # label -> reward -> (prompts, M) raw
    kls: dict[str, float | None] = {}
    for label, path in models.items():
        cache = out / "generations" / f"{label}.json"
        gen = generate(path, [str(p) for p in prompts], trl_prompts, ev.samples_per_prompt, ev, engine, cache)
        raw = score_generations(rewards, trl_prompts, gen.completions, gen.token_lengths)
        scores[label] = {k: v.tolist() for k, v in raw.items()}
        card = load_model_card(path) if label != "base" else None
        kls[label] = card.kl if card else None
    (out / "scores.json").write_text(json.dumps({"prompts": [str(p) for p in prompts], "scores": scores, "kl": kls}))
    return report(cfg)


def report(cfg: SweepConfig) -> dict[str, Any]:
    """Tables, intervals and figures from ``scores.json`` alone (``iama sweep --report``), so a
    result can be recomputed from the committed raw scores."""
    out = cfg.output_dir
    if cfg.eval.snapshots:
        from iama_eval.kl_path import report_path

        return report_path(cfg)
    saved = json.loads((out / "scores.json").read_text())
    base_cfg = load_config(cfg.base, dict(cfg.set))
    tasks = list(base_cfg.objective.tasks)
    ev = cfg.eval
    values = {  # label -> (tasks, budgets, prompts)
        label: per_prompt_task_values({k: np.asarray(v) for k, v in raw.items()}, tasks, ev.budgets, ev.seed)
        for label, raw in saved["scores"].items()
    }
    summary = summarize(cfg, tasks, base_cfg.objective.aggregation, values, saved.get("kl", {}))
    _write_csv(summary, out / "results.csv")
    summary["figures"] = plot_fronts(summary, tasks, cfg.eval.budgets, out)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


def summarize(
    cfg: SweepConfig,
    tasks: list[Task],
    base_agg: Aggregation,
    values: dict[str, np.ndarray],
    kls: dict[str, float | None],
) -> dict[str, Any]:
    """Per (objective type, weights, N): each task's mean value and the objective g, with 95 %
    bootstrap intervals over seeds and prompts; plus the base model's values."""
    rng = np.random.default_rng(0)
    rows = []
    groups: list[tuple[str, list[float]]] = [(t, w) for t in cfg.objective_types for w in cfg.weights]
    if "base" in values:
        groups = [("base", []), *groups]
    names = [t.name or f"task{i}" for i, t in enumerate(tasks)]
    for objective_type, weights in groups:
        labels = ["base"] if objective_type == "base" else [run_label(objective_type, weights, s) for s in cfg.seeds]
        stack = np.stack([values[label] for label in labels])  # (seeds, tasks, budgets, prompts)
        # the base model is not trained for any weights: its g uses the base config's own aggregation
        agg = base_agg.model_copy(update={"weights": weights}) if weights else base_agg
        for b, n in enumerate(cfg.eval.budgets):
            est = bootstrap(stack[:, :, b, :], agg, cfg.bootstrap, rng)
            row: dict[str, Any] = {"model": objective_type, "weights": weights, "budget": n}
            for k, name in enumerate([*names, "g"]):
                row[name] = {"mean": est["mean"][k], "ci95": est["ci95"][k]}
            row["kl"] = [kls.get(label) for label in labels]
            rows.append(row)
    return {
        "tasks": names,
        "budgets": cfg.eval.budgets,
        "seeds": cfg.seeds,
        "config": json.loads(cfg.model_dump_json()),
        "rows": rows,
    }


def _write_csv(summary: dict[str, Any], path: Path) -> None:
    names = summary["tasks"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        header = ["model", "weights", "budget"]
        for n in [*names, "g"]:
            header += [f"{n}_mean", f"{n}_ci_lo", f"{n}_ci_hi"]
        w.writerow([*header, "kl_per_seed"])
        for row in summary["rows"]:
            cells = [row["model"], json.dumps(row["weights"]), row["budget"]]
            for n in [*names, "g"]:
                cells += [row[n]["mean"], *row[n]["ci95"]]
            w.writerow([*cells, json.dumps(row["kl"])])


def plot_fronts(summary: dict[str, Any], tasks: list[Task], budgets: list[int], out: Path) -> list[str]:
    """Task 1 vs task 2 per N: one curve per objective type over the weights, 95 % intervals."""
    if len(tasks) < 2:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iama_eval.plots import interval_errorbar

    a, b = summary["tasks"][:2]
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 4), squeeze=False)
    colors = {"iama": "tab:red", "linear": "tab:blue", "base": "black"}
    for ax, n in zip(axes[0], budgets, strict=True):
        for model in sorted({r["model"] for r in summary["rows"]}):
            rows = [r for r in summary["rows"] if r["model"] == model and r["budget"] == n]
            interval_errorbar(
                ax,
                [r[a] for r in rows],
                [r[b] for r in rows],
                label=model,
                color=colors.get(model),
                linestyle="-" if model != "base" else "none",
            )
        ax.set_title(f"N = {n}" + (" (no BoN)" if n == 1 else ""))
        ax.set_xlabel(a)
        ax.set_ylabel(b)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "fronts.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]
