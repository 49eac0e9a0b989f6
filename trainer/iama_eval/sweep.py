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

The command on top of the layers: configs (:mod:`iama_eval.config`), sampling and scoring
(:mod:`iama_eval.samples`), per-prompt values (:mod:`iama_eval.values`), intervals
(:func:`iama.bootstrap.seeds_prompts_mean_ci`), the fronts figure (:mod:`iama_eval.plots`);
with ``eval.snapshots`` the whole KL path instead (:mod:`iama_eval.kl_path`).
"""

from __future__ import annotations

import gc
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from iama.bootstrap import seeds_prompts_mean_ci
from iama.modelcard import load_model_card
from iama.models import resolve_model
from iama.objective import Aggregation, Task, aggregation_value
from iama_eval.config import SweepConfig, first_difference, run_configs, run_label, training_identity
from iama_eval.kl_path import evaluate_path, report_path
from iama_eval.plots import plot_fronts
from iama_eval.raw_files import read_scores, write_scores
from iama_eval.samples import scoring_setup
from iama_eval.tables import write_sweep_csv
from iama_eval.values import per_prompt_task_values
from iama_trainer.config import TrainConfig, load_config, recorded_config

log = logging.getLogger("iama.sweep")


def train_all(cfg: SweepConfig, runs: dict[str, TrainConfig]) -> dict[str, Path]:
    from iama_trainer.run import train  # heavy: imports torch and TRL

    check_reused(cfg, runs)
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


def check_reused(cfg: SweepConfig, runs: dict[str, TrainConfig]) -> None:
    """Every run this sweep takes from another sweep (``reuse``) is trained there, as far as this
    sweep needs, by a config that trains the same model; else a ``ValueError`` saying what
    differs. Checked before anything trains, so a wrong ``reuse`` costs nothing."""
    for label, run_cfg in runs.items():
        if run_cfg.objective.type not in cfg.reuse:
            continue
        trained = recorded_config(run_cfg.output_dir)
        if not (run_cfg.output_dir / "model" / "iama.json").is_file() or trained is None:
            raise ValueError(f"reuse: {label} is not trained in {run_cfg.output_dir}: train that sweep first")
        where = first_difference(training_identity(trained), training_identity(run_cfg))
        if where is not None:
            raise ValueError(f"reuse: {label} in {run_cfg.output_dir} was trained with another {where!r}")
        if trained.steps < run_cfg.steps:
            raise ValueError(f"reuse: {label} was trained for {trained.steps} steps, this sweep needs {run_cfg.steps}")


def _free_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_sweep(cfg: SweepConfig) -> dict[str, Any]:
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    runs = run_configs(cfg)
    first = next(iter(runs.values()))
    base_path = resolve_model(first.model)
    models = {label: str(path) for label, path in train_all(cfg, runs).items()}
    if cfg.eval.snapshots:  # every point of the KL path instead of the final models alone
        evaluate_path(cfg, runs, base_path)
        return report(cfg)
    if cfg.include_base:
        models = {"base": base_path, **models}

    ev = cfg.eval
    setup = scoring_setup(ev.prompts, first.rewards, base_path, ev.engine)  # raw rewards: the sweep's units
    prompts = setup.prompts
    scores: dict[str, dict[str, list[list[float]]]] = {}  # label -> reward -> (prompts, M) raw
    kls: dict[str, float | None] = {}
    for label, path in models.items():
        cache = out / "generations" / f"{label}.json"
        _, raw = setup.sample_and_score(path, [str(p) for p in prompts], ev.samples_per_prompt, ev.generation, cache)
        scores[label] = {k: v.tolist() for k, v in raw.items()}
        card = load_model_card(path) if label != "base" else None
        kls[label] = card.kl if card else None
    write_scores(out, [str(p) for p in prompts], scores, kls)
    return report(cfg)


def report(cfg: SweepConfig) -> dict[str, Any]:
    """Tables, intervals and figures from ``scores.json`` alone (``iama sweep --report``), so a
    result can be recomputed from the committed raw scores."""
    out = cfg.output_dir
    if cfg.eval.snapshots:
        return report_path(cfg)
    saved = read_scores(out)
    base_cfg = load_config(cfg.base, dict(cfg.set))
    tasks = list(base_cfg.objective.tasks)
    ev = cfg.eval
    values = {  # label -> (tasks, budgets, prompts)
        label: per_prompt_task_values({k: np.asarray(v) for k, v in raw.items()}, tasks, ev.budgets, ev.seed)
        for label, raw in saved["scores"].items()
    }
    summary = summarize(cfg, tasks, base_cfg.objective.aggregation, values, saved.get("kl", {}))
    write_sweep_csv(summary, out / "results.csv")
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
    rng = np.random.default_rng(0)  # one stream for every row: intervals are reproducible
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
            g_of_means = partial(aggregation_value, agg=agg)  # Eq. 1 on each draw's task means
            mean, ci = seeds_prompts_mean_ci(stack[:, :, b, :], g_of_means, cfg.bootstrap, rng)
            # mean (tasks + 1,), ci (tasks + 1, 2): each task, then g of the task means
            row: dict[str, Any] = {"model": objective_type, "weights": weights, "budget": n}
            for k, name in enumerate([*names, "g"]):
                row[name] = {"mean": float(mean[k]), "ci95": (float(ci[k, 0]), float(ci[k, 1]))}
            row["kl"] = [kls.get(label) for label in labels]
            rows.append(row)
    return {
        "tasks": names,
        "budgets": cfg.eval.budgets,
        "seeds": cfg.seeds,
        "config": json.loads(cfg.model_dump_json()),
        "rows": rows,
    }
