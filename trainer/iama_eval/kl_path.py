"""IAMA vs linear GRPO at matched KL: every snapshot of every run, evaluated with its KL.

A run's final model says little on its own: two methods that end at different KLs are not
comparable (more KL buys more reward for either). So each run saves its weights along training
(``snapshot_steps``), and here every snapshot is sampled on held-out prompts, scored, and its
sequence-level KL to the base measured on those same samples (:mod:`iama_eval.sequence_kl`).
The report then puts every metric against KL:

- the path: each method's g under its tasks' algorithms (and each user's BoN_N reward) against
  KL, per seed and averaged over seeds, with the optima :mod:`iama.optimum` predicts on the
  base's marginal;
- matched KL: at each IAMA snapshot's KL inside linear's range, linear's values interpolated
  along its own path, and the difference with a 95 % interval;
- the compute ratio: the smallest N at which linear's BoN_N reaches IAMA's g at the tasks' own N;
- N = 1 histograms of the scalar the rewards depend on (base, linear, IAMA; seeds pooled; "no
  value" and truncated counted apart), the predicted optimum overlaid.

Intervals come from one bootstrap that resamples prompts (shared by both methods: the same
held-out prompts) and, independently per method, seeds; interpolation happens inside each
draw. Everything is recomputed from ``path_scores.json``, the committed raw file.

A command under ``iama sweep``: :func:`evaluate_path` samples (:mod:`iama_eval.samples`) and
measures KL (:mod:`iama_eval.sequence_kl`) into the raw file; :func:`report_path` turns it into
tables (:mod:`iama_eval.matched_kl`, pure), the prediction (:mod:`iama_eval.prediction`) and
figures (:mod:`iama_eval.path_plots`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from iama.files import atomic_write_json
from iama.models import resolve_model
from iama.rewards import RewardSet, bind_tokenizer
from iama_eval.config import SweepConfig
from iama_eval.distributions import from_json_values, json_values
from iama_eval.kl_split import kl_split
from iama_eval.matched_kl import MethodPath, bootstrap_path, matched_rows, method_paths, path_rows
from iama_eval.path_plots import plot_bon, plot_histograms, plot_path
from iama_eval.prediction import predict, shared_scalar
from iama_eval.raw_files import PATH_SCORES, read_path_scores, write_path_scores
from iama_eval.samples import scoring_setup
from iama_eval.sequence_kl import load_for_scoring, sequence_logprobs
from iama_eval.tables import write_path_csv
from iama_trainer.config import TrainConfig, load_config, recorded_config

log = logging.getLogger("iama.sweep")


def evaluate_path(cfg: SweepConfig, runs: dict[str, TrainConfig], base_path: str) -> Path:
    """Sample, score and measure the KL of the base and every snapshot (and final model) of
    every run; append each point to ``path_scores.json`` as it finishes (so it resumes)."""
    from iama_trainer.callbacks import SNAPSHOTS, list_snapshots  # heavy: imports transformers

    ev = cfg.eval
    out = cfg.output_dir
    first = next(iter(runs.values()))
    setup = scoring_setup(ev.prompts, first.rewards, base_path, ev.engine)
    prompts, trl_prompts, rewards = setup.prompts, setup.trl_prompts, setup.rewards
    task_names = sorted({n for t in first.objective.tasks for n in t.weights})
    scalar_name = shared_scalar(rewards, task_names)
    scalar_fn = rewards.scalar_rewards()[task_names[0]] if scalar_name else None

    settings = evaluation_settings(cfg)
    points: dict[str, Any] = read_path_scores(out).get("points", {})  # resume
    shared = reused_points(cfg, [str(p) for p in prompts], settings, set(runs))
    if new := {key: point for key, point in shared.items() if key not in points}:
        points |= new  # written now: the report reads them even if nothing is left to evaluate
        write_path_scores(out, [str(p) for p in prompts], scalar_name, points, settings)
    base: tuple[Any, Any] | None = None  # loaded on the first point that needs it (a resume may need none)
    todo: list[tuple[str, str, int | None, int, str]] = [("base", "base", None, 0, base_path)]
    for label, run_cfg in runs.items():
        snaps = {step: str(p) for step, p in list_snapshots(run_cfg.output_dir / SNAPSHOTS).items()}
        final = run_cfg.output_dir / "model"
        if final.is_dir() and (last := trained_steps(run_cfg)) not in snaps:
            snaps[last] = str(final)
        for step, path in sorted(snaps.items()):
            if ev.steps is None or step in ev.steps:
                todo.append((label, run_cfg.objective.type, run_cfg.seed, step, path))
    for label, method, seed, step, path in todo:
        key = f"{label}@{step}"
        if key in points:
            continue
        log.info("evaluating %s at step %d", label, step)
        cache = out / "generations" / label / f"step-{step:06d}.json"
        gen, raw = setup.sample_and_score(path, [str(p) for p in prompts], ev.samples_per_prompt, ev.generation, cache)
        if base is None:
            base = load_for_scoring(base_path)
        base_model, tok = base
        temperature = ev.sampling.temperature
        kl_ids = [group[: ev.kl_samples] for group in gen.token_ids]  # (P, ≤ kl_samples)
        if label == "base":
            ratio = np.zeros((len(prompts), len(kl_ids[0])))
        else:
            ref_lp = sequence_logprobs(base_model, tok, trl_prompts, kl_ids, temperature)
            policy, _ = load_for_scoring(path)
            ratio = sequence_logprobs(policy, tok, trl_prompts, kl_ids, temperature) - ref_lp
            del policy
        flat = [c for g in gen.completions for c in g]
        counts = [n for g in gen.token_lengths for n in g]
        scalar = scalar_fn.scalar(flat, counts).reshape(len(prompts), -1) if scalar_fn is not None else None
        points[key] = {
            "label": label,
            "method": method,
            "seed": seed,
            "step": step,
            "scores": {k: v.tolist() for k, v in raw.items()},
            "tokens": gen.token_lengths,
            "truncated": (np.asarray(gen.token_lengths) >= ev.max_tokens).tolist(),
            "scalar": json_values(scalar) if scalar is not None else None,
            "log_ratio": ratio.tolist(),
            "completions": gen.completions,
        }
        write_path_scores(out, [str(p) for p in prompts], scalar_name, points, settings)
    return out / PATH_SCORES


def evaluation_settings(cfg: SweepConfig) -> dict[str, Any]:
    """What makes two sweeps' points of one snapshot the same measurement: the held-out prompts'
    source, the samples, the cap, the sampling and its seed, the dtype, the KL's sample count."""
    return cfg.eval.model_dump(mode="json", exclude={"steps", "budgets", "snapshots", "engine"})


def trained_steps(run_cfg: TrainConfig) -> int:
    """The step of a run's final model: its own record's (a reused run may have trained longer
    than this sweep asks), else the config's."""
    trained = recorded_config(run_cfg.output_dir)
    return trained.steps if trained is not None else run_cfg.steps


def reused_points(cfg: SweepConfig, prompts: list[str], settings: dict[str, Any], labels: set[str]) -> dict[str, Any]:
    """The points of the runs ``labels`` that ``cfg.reuse`` takes from other sweeps, read from their
    ``path_scores.json`` (the base's too): only where the same prompts were sampled the same way,
    else none (this sweep evaluates them itself, and says why)."""
    found: dict[str, Any] = {}
    for method, root in cfg.reuse.items():
        other = read_path_scores(root)
        if not other:
            continue
        if other.get("prompts") != prompts or other.get("eval") != settings:
            what = "prompts" if other.get("prompts") != prompts else "evaluation settings"
            log.warning("reuse: %s evaluated other %s; evaluating %s's points here", root, what, method)
            continue
        for key, point in other["points"].items():
            if point["method"] == "base" or (point["method"] == method and point["label"] in labels):
                found[key] = point
    return found


def report_path(cfg: SweepConfig) -> dict[str, Any]:
    """Tables and figures of the KL path from ``path_scores.json`` alone."""
    out = cfg.output_dir
    data = read_path_scores(out)
    if not data:
        raise FileNotFoundError(f"{out / PATH_SCORES}: nothing to report (run the sweep first)")
    base_cfg = load_config(cfg.base, dict(cfg.set))
    tasks = list(base_cfg.objective.tasks)
    budgets = list(cfg.eval.budgets)
    names = [t.name or f"task{i}" for i, t in enumerate(tasks)]
    own_n = int(tasks[0].n)  # BoN's budget, or the candidates soft BoN draws at serve time
    if own_n not in budgets:
        raise ValueError(f"eval.budgets must include the tasks' own N = {own_n}")

    paths = method_paths(data["points"], list(cfg.objective_types), tasks, budgets, cfg.eval.seed)
    point, draws = bootstrap_path(paths, base_cfg.objective.aggregation, cfg.bootstrap)
    summary: dict[str, Any] = {
        "tasks": names,
        "budgets": budgets,
        "own_n": own_n,
        "seeds": {m: a.seeds for m, a in paths.items()},
        "scalar": data.get("scalar"),
        "bootstrap": cfg.bootstrap,
        "path": path_rows(paths, point, draws, names, budgets),
        "matched_kl": matched_rows(point, draws, budgets, own_n),
        "note": "95 % intervals resample held-out prompts (shared) and seeds (per method); matched rows "
        "interpolate linear's path at each IAMA snapshot's KL (NaN outside linear's KL range)",
    }
    summary["prediction"] = _prediction(base_cfg, data, paths)
    if data.get("scalar"):
        summary["kl_split"] = kl_split(data["points"])
    figures = [plot_path(summary, out / "kl_path.png"), plot_bon(summary, out / "bon_by_n.png")]
    hist = plot_histograms(data, paths, summary, out / "histograms.png", reward_targets(base_cfg))
    summary["figures"] = [f.name for f in [*figures, hist] if f is not None]  # beside kl_path.json
    write_path_csv(summary, out / "kl_path.csv")
    atomic_write_json(out / "kl_path.json", summary)
    return summary


def reward_targets(cfg: TrainConfig) -> list[float]:
    """The rewards' ``target`` parameters (the users' wishes on the scalar), for the figures."""
    return sorted({float(spec.params["target"]) for spec in cfg.rewards.values() if "target" in spec.params})


def _prediction(base_cfg: TrainConfig, data: dict[str, Any], paths: dict[str, MethodPath]) -> dict[str, Any] | None:
    """The optima predicted on the base's held-out marginal of the scalar, at the KLs reached."""
    if not data.get("scalar"):
        return None
    rewards = RewardSet(bind_tokenizer(base_cfg.rewards, resolve_model(base_cfg.model)))
    x = from_json_values(data["points"]["base@0"]["scalar"])
    reached = [float(a.kl[:, -1].mean()) for a in paths.values()]
    kls = sorted({round(k, 4) for k in reached if k > 0} | {0.05, 0.1, 0.2, 0.5, 1.0})
    return predict(base_cfg, rewards, x, kls, [1, 2, 4, 8, 16])
