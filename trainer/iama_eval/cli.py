"""``iama eval``: measure rewards under BoN / soft BoN across models, weights and budgets."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer

from iama.console import fail


def _budgets(value: str) -> list[int]:
    try:
        return [int(b) for b in value.split(",")]
    except ValueError:
        fail("eval", f"--budgets: expected comma-separated whole numbers such as 1,2,4,8, got {value!r}", 2)


def eval_cmd(
    config: Annotated[str | None, typer.Argument(help="YAML eval config (flags override it)")] = None,
    model: Annotated[list[str] | None, typer.Option(help="LABEL=PATH_OR_ID (repeatable)")] = None,
    output_dir: Annotated[str | None, typer.Option(help="where tables, plots and cached generations go")] = None,
    budgets: Annotated[str | None, typer.Option(help="comma-separated, e.g. 1,2,4,8,16")] = None,
    baseline: Annotated[str | None, typer.Option(help="baseline model label for the compute saving")] = None,
    candidate: Annotated[str | None, typer.Option(help="IAMA model label for the compute saving")] = None,
    engine: Annotated[str | None, typer.Option(help="auto | vllm | hf")] = None,
) -> None:
    """Reward per (model, weights, N) under BoN / soft BoN, Pareto plots, hypervolume, savings."""
    from iama.configfile import ConfigError
    from iama.models import ModelNotFound
    from iama.rewards import RewardLoadError
    from iama_eval.config import load_eval_config
    from iama_eval.run import NoRewards, run_eval

    models = None
    if model:
        models = {}
        for item in model:
            if "=" not in item:
                fail("eval", f"--model: expected LABEL=PATH, got {item!r}", 2)
            k, v = item.split("=", 1)
            models[k] = v
    try:
        cfg = load_eval_config(
            config,
            models=models,
            output_dir=output_dir,
            budgets=_budgets(budgets) if budgets else None,
            baseline=baseline,
            candidate=candidate,
            engine=engine,
        )
    except ConfigError as exc:
        fail("eval", str(exc), 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = run_eval(cfg)
    except (ModelNotFound, RewardLoadError, NoRewards) as exc:
        fail("eval", str(exc), 1)
    typer.echo(
        json.dumps({k: summary[k] for k in ("hypervolume", "compute_saving", "mean_tokens", "figures")}, indent=2)
    )


def sweep_cmd(
    config: Annotated[str, typer.Argument(help="YAML sweep config (see iama_eval.sweep.SweepConfig)")],
    report_only: Annotated[
        bool, typer.Option("--report", help="only recompute tables and figures from OUTPUT/scores.json")
    ] = False,
) -> None:
    """Train IAMA and linear GRPO across weights and seeds, evaluate with and without BoN (CIs)."""
    from iama.configfile import ConfigError
    from iama.models import ModelNotFound
    from iama.rewards import RewardLoadError
    from iama_eval.sweep import load_sweep_config, report, run_sweep

    try:
        cfg = load_sweep_config(config)
    except ConfigError as exc:
        fail("sweep", str(exc), 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = report(cfg) if report_only else run_sweep(cfg)
    except (ModelNotFound, RewardLoadError, FileExistsError, FileNotFoundError) as exc:
        fail("sweep", str(exc), 1)
    typer.echo(json.dumps({"results": str(cfg.output_dir / "results.json"), "figures": summary["figures"]}))


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("sweep")(sweep_cmd)
