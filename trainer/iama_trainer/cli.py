"""``iama train CONFIG``: non-linear GRPO (or the linear baseline) from a YAML config."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
import yaml


def train(
    config: Annotated[str, typer.Argument(help="YAML config path, or a preset name: length, sentiment")],
    resume: Annotated[bool, typer.Option(help="continue from the last complete checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="delete an existing output_dir first")] = False,
    output_dir: Annotated[str | None, typer.Option(help="override output_dir")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a field: --set steps=10 --set objective.type=linear")
    ] = None,
) -> None:
    """Train an IAMA model (non-linear GRPO on TRL) and write an HF checkpoint + iama.json."""
    from iama_trainer.config import load_config
    from iama_trainer.run import train as run_train

    overrides = {}
    for item in set_ or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k] = yaml.safe_load(v)
    if output_dir:
        overrides["output_dir"] = output_dir
    try:
        cfg = load_config(config, overrides)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        final = run_train(cfg, resume=resume, overwrite=overwrite)
    except FileExistsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(str(final))


def register(app: typer.Typer) -> None:
    app.command("train")(train)
