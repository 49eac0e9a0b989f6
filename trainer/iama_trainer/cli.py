"""``iama train CONFIG`` and ``iama merge-lora``: non-linear GRPO (or the linear baseline) from a
YAML config, and turning an unmerged LoRA run into a servable checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from iama.console import fail


def parse_overrides(command: str, items: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` items as a dict (values parsed as YAML); a malformed one ends the
    command with one line."""
    overrides: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            fail(command, f"--set expects key=value, got {item!r}", 2)
        k, v = item.split("=", 1)
        try:
            overrides[k] = yaml.safe_load(v)
        except yaml.YAMLError:
            fail(command, f"--set {item}: the value is not valid YAML", 2)
    return overrides


def train(
    config: Annotated[str, typer.Argument(help="YAML config path, or a preset name: length, sentiment")],
    resume: Annotated[bool, typer.Option(help="continue from the last complete checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="delete an existing output_dir first")] = False,
    output_dir: Annotated[str | None, typer.Option(help="override output_dir")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a field: --set steps=10 --set objective.type=linear")
    ] = None,
    accelerate_config: Annotated[
        str | None,
        typer.Option(
            help="run under accelerate launch with this config: multi_gpu, zero2, zero3, fsdp2, cpu_ddp, "
            "cpu_zero2, cpu_zero3, or a path"
        ),
    ] = None,
    num_processes: Annotated[
        int | None, typer.Option(min=1, help="with --accelerate-config: processes (GPUs) on this machine")
    ] = None,
) -> None:
    """Train an IAMA model (non-linear GRPO on TRL) and write an HF checkpoint + iama.json."""
    import importlib.util

    if importlib.util.find_spec("trl") is None:  # e.g. the server-only Docker image
        fail("train", "the trainer is not installed here: pip install 'iama[trainer]' (or the iama:*-train image)")
    if num_processes is not None and accelerate_config is None:
        fail("train", "--num-processes needs --accelerate-config", 2)
    from iama.configfile import ConfigError
    from iama.models import ModelNotFound
    from iama_trainer.config import load_config

    overrides = parse_overrides("train", set_)
    if output_dir:
        overrides["output_dir"] = output_dir
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        fail("train", str(exc), 2)
    if cfg.rollout_func:
        from iama_trainer.config import import_function

        try:
            import_function(cfg.rollout_func)
        except ValueError as exc:
            fail("train", str(exc), 2)
    if accelerate_config is not None:  # checked here first, so that a mistake is one line, not one per process
        _relaunch(accelerate_config, num_processes, config, resume, overwrite, output_dir, set_, cfg.lora.enabled)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The training stack (transformers, TRL, peft: ~5 s of imports) loads only once the config is
    # known to be good, so that a config mistake is reported at once.
    from iama_trainer.run import train as run_train

    try:
        final = run_train(cfg, resume=resume, overwrite=overwrite)
    except (FileExistsError, ModelNotFound) as exc:
        fail("train", str(exc), 1)
    typer.echo(str(final))


def _relaunch(
    name: str,
    num_processes: int | None,
    config: str,
    resume: bool,
    overwrite: bool,
    output_dir: str | None,
    set_: list[str] | None,
    lora: bool,
) -> None:
    """Replace this process by ``accelerate launch`` running the same command without the flag:
    signals (a scheduler's SIGTERM) go to accelerate, which forwards them to its workers."""
    import os

    from iama_trainer.launch import launch_command, resolve_config, zero_stage

    try:
        path = resolve_config(name)
    except ValueError as exc:
        fail("train", str(exc), 2)
    if lora and zero_stage(path) == 3:
        fail("train", "lora under DeepSpeed ZeRO-3 is not supported (the final save); use zero2 or multi_gpu", 2)
    args = [config, *(["--resume"] if resume else []), *(["--overwrite"] if overwrite else [])]
    args += ["--output-dir", output_dir] if output_dir else []
    args += [a for item in set_ or [] for a in ("--set", item)]
    cmd = launch_command(path, args, num_processes)
    typer.echo(" ".join(cmd), err=True)
    os.execv(cmd[0], cmd)


def merge_lora(
    adapter: Annotated[Path, typer.Argument(help="a LoRA run's model directory (adapter_config.json)")],
    output: Annotated[Path, typer.Argument(help="where the merged checkpoint goes")],
) -> None:
    """Merge a LoRA adapter into its base model: a full checkpoint (with iama.json) to serve."""
    from iama_trainer.lora import merge_adapter

    try:
        typer.echo(str(merge_adapter(adapter, output)))
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        fail("merge-lora", str(exc), 1)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("merge-lora")(merge_lora)
