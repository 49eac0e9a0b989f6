"""``iama eval``: measure rewards under BoN / soft BoN across models, weights and budgets."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer


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
    from iama_eval.config import load_eval_config
    from iama_eval.run import run_eval

    models = None
    if model:
        models = {}
        for item in model:
            if "=" not in item:
                raise typer.BadParameter(f"--model expects LABEL=PATH, got {item!r}")
            k, v = item.split("=", 1)
            models[k] = v
    try:
        cfg = load_eval_config(
            config,
            models=models,
            output_dir=output_dir,
            budgets=[int(b) for b in budgets.split(",")] if budgets else None,
            baseline=baseline,
            candidate=candidate,
            engine=engine,
        )
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = run_eval(cfg)
    typer.echo(
        json.dumps({k: summary[k] for k in ("hypervolume", "compute_saving", "mean_tokens", "figures")}, indent=2)
    )


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
