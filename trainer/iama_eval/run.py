"""``iama eval``: models → generate (cached) → score → table, plots, summary.

A command on top of the evaluation layers: the setup and sampling come from
:mod:`iama_eval.samples`, the per-(model, weights, N) values from :mod:`iama_eval.evaluate`,
the figures from :mod:`iama_eval.plots`. What is left here is which rewards to evaluate with
(config or model card) and where each output goes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from iama.modelcard import load_model_card
from iama.models import resolve_model
from iama.rewards import RewardSpec, reward_prompt
from iama_eval.config import EvalConfig
from iama_eval.evaluate import Row, evaluate_model, summarize, trade_off_warnings, weight_grid
from iama_eval.plots import length_histogram, pareto_plot
from iama_eval.samples import scoring_setup
from iama_eval.tables import write_eval_csv

log = logging.getLogger("iama.eval")


class NoRewards(ValueError):
    """Neither the config nor any model card says which rewards to evaluate."""


def _reward_specs(cfg: EvalConfig, paths: dict[str, str]) -> dict[str, RewardSpec]:
    """Explicit rewards, else the rewards (with normalisation) of ``rewards_from`` / the first
    model that has a card: every model is scored with the *same* statistics."""
    order = [cfg.rewards_from] if cfg.rewards_from else list(paths)
    card = next((c for c in (load_model_card(paths[m]) if Path(paths[m]).is_dir() else None for m in order) if c), None)
    if cfg.rewards is not None:
        specs = dict(cfg.rewards)
        if card:  # reuse the card's statistics for rewards of the same name
            specs = {
                k: v if v.stats or k not in card.rewards else v.model_copy(update={"stats": card.rewards[k].stats})
                for k, v in specs.items()
            }
    elif card is not None:
        specs = dict(card.rewards)
    else:
        raise NoRewards("no rewards to evaluate with: no model has an iama.json; set `rewards:` in the config")
    return specs


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    from tqdm.auto import tqdm

    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = {label: resolve_model(m) for label, m in cfg.models.items()}
    # every model is scored by the same rewards, bound to the first model's tokenizer
    setup = scoring_setup(cfg.prompts, _reward_specs(cfg, paths), next(iter(paths.values())), cfg.engine)
    engine, rewards = setup.engine, setup.rewards
    names = rewards.names
    weights_list = cfg.weights or weight_grid(names, cfg.grid)
    texts = [reward_prompt(p) for p in setup.prompts]  # for the cached generations' record

    rows: list[Row] = []
    lengths: dict[str, np.ndarray] = {}
    raw_by_model: dict[str, dict[str, np.ndarray]] = {}
    for label in tqdm(list(paths), desc="models"):
        cache = out / "generations" / f"{label}.json"
        gen, raw = setup.sample_and_score(paths[label], texts, cfg.samples, cfg.generation, cache)
        raw_by_model[label] = raw
        lengths[label] = np.asarray(gen.token_lengths, dtype=np.float64)
        rows += evaluate_model(
            label, raw, lengths[label], rewards, weights_list, cfg.budgets, cfg.algorithms, cfg.tau, cfg.seed
        )

    write_eval_csv(rows, names, out / "results.csv")
    summary = summarize(rows, names, cfg.baseline, cfg.candidate)
    summary["config"] = json.loads(cfg.model_dump_json())
    summary["engine"] = engine
    summary["mean_tokens"] = {k: float(v.mean()) for k, v in lengths.items()}
    summary["warnings"] = trade_off_warnings(raw_by_model, names)
    for w in summary["warnings"]:
        log.warning("%s", w)
    summary["rows"] = [r.__dict__ for r in rows]
    figures = []
    if len(names) >= 2:
        for alg in cfg.algorithms:
            p = out / f"pareto_{alg}.png"
            pareto_plot(rows, names, alg, p)
            figures.append(str(p))
    length_histogram(lengths, out / "lengths.png")
    figures.append(str(out / "lengths.png"))
    summary["figures"] = figures
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    log.info("wrote %s", out)
    return summary
