"""``iama eval``, ``iama sweep``, ``iama probe``: flags in, one command module called, JSON out.

The top of the evaluation layers. Each command imports its module inside the function, as
``iama/cli.py`` does, so that ``iama --help`` does not load numpy, pydantic configs or the
trainer: a matter of start-up time, not of import order (nothing below imports this module).
"""

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
    config: Annotated[str, typer.Argument(help="YAML sweep config (see iama_eval.config.SweepConfig)")],
    report_only: Annotated[
        bool, typer.Option("--report", help="only recompute tables and figures from OUTPUT/scores.json")
    ] = False,
    train_only: Annotated[
        bool, typer.Option("--train-only", help="train (or resume) every run, evaluate none")
    ] = False,
) -> None:
    """Train IAMA and linear GRPO across weights and seeds, evaluate with and without BoN (CIs)."""
    from iama.configfile import ConfigError
    from iama.models import ModelNotFound
    from iama.rewards import RewardLoadError
    from iama_eval.config import load_sweep_config, run_configs
    from iama_eval.sweep import report, run_sweep, train_all

    try:
        cfg = load_sweep_config(config)
    except ConfigError as exc:
        fail("sweep", str(exc), 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if train_only:
            train_all(cfg, run_configs(cfg))
            typer.echo(json.dumps({"trained": str(cfg.output_dir / "runs")}))
            return
        summary = report(cfg) if report_only else run_sweep(cfg)
    except (ModelNotFound, RewardLoadError, FileExistsError, FileNotFoundError, ValueError) as exc:
        fail("sweep", str(exc), 1)
    results = cfg.output_dir / ("kl_path.json" if cfg.eval.snapshots else "results.json")
    figures = [str(cfg.output_dir / f) for f in summary["figures"]]  # a snapshot report names them beside it
    typer.echo(json.dumps({"results": str(results), "figures": figures}))


def probe_cmd(
    config: Annotated[str, typer.Argument(help="training config: a preset name or a YAML path")],
    output_dir: Annotated[str, typer.Option(help="where probe.json and probe.png go")] = "runs/probe",
    samples_per_prompt: Annotated[int, typer.Option(min=1, help="base samples per prompt")] = 16,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="cap (default: 2x the config's)")] = None,
    kl: Annotated[list[float] | None, typer.Option(help="also predict the optima at this KL (repeatable)")] = None,
    engine: Annotated[str, typer.Option(help="auto | vllm | hf")] = "auto",
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config field, as in iama train")] = None,
) -> None:
    """Measure the base model on a config's prompts and rewards, and predict the optima."""
    from pathlib import Path

    from iama.configfile import ConfigError
    from iama.models import ModelNotFound
    from iama.rewards import RewardLoadError
    from iama_eval.probe import probe
    from iama_trainer.cli import parse_overrides
    from iama_trainer.config import load_config

    if engine not in ("auto", "vllm", "hf"):
        fail("probe", f"--engine must be auto, vllm or hf, got {engine!r}", 2)
    if any(k <= 0 for k in kl or []):
        fail("probe", "--kl must be > 0", 2)
    try:
        cfg = load_config(config, parse_overrides("probe", set_))
    except ConfigError as exc:
        fail("probe", str(exc), 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = probe(cfg, Path(output_dir), samples_per_prompt, max_tokens, engine, list(kl or []))
    except (ModelNotFound, RewardLoadError, ValueError) as exc:
        fail("probe", str(exc), 1)
    keys = ("length", "length_untruncated", "scalars", "warnings")
    shown = {k: summary[k] for k in keys if k in summary} | {"figure": str(Path(output_dir) / summary["figure"])}
    typer.echo(json.dumps(shown, indent=2))


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("sweep")(sweep_cmd)
    app.command("probe")(probe_cmd)
