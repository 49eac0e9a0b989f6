"""``iama train --accelerate-config NAME``: the same run under ``accelerate launch``.

The configs beside this module are TRL's (``multi_gpu``, ``zero2``, ``zero3``, ``fsdp2``, for
GPUs) plus CPU ones run by the tests (``cpu_ddp``, ``cpu_zero2``, ``cpu_zero3``, gloo). A name
or a path to any accelerate config file is accepted; accelerate does the launching (processes,
ranks, rendezvous), this module only builds its command line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).with_name("accelerate_configs")


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config(name: str) -> Path:
    """A bundled config by name, or an existing file; ValueError naming the choices otherwise."""
    bundled = CONFIG_DIR / f"{name}.yaml"
    if bundled.is_file():
        return bundled
    path = Path(name).expanduser()
    if path.is_file():
        return path
    raise ValueError(f"no accelerate config {name!r}: use one of {', '.join(available_configs())} or a file path")


def launch_command(config: Path, train_args: list[str], num_processes: int | None = None) -> list[str]:
    """``accelerate launch --config_file CONFIG [--num_processes K] -m iama.cli train …``."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    if num_processes is not None:
        cmd += ["--num_processes", str(num_processes)]
    return [*cmd, "-m", "iama.cli", "train", *train_args]


def uses_deepspeed() -> bool:
    """Whether accelerate launched this process for DeepSpeed (it says so in the environment)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def zero_stage(config: Path) -> int | None:
    """The DeepSpeed ZeRO stage an accelerate config asks for, or None without DeepSpeed."""
    import yaml

    data = yaml.safe_load(config.read_text()) or {}
    if data.get("distributed_type") != "DEEPSPEED":
        return None
    stage = (data.get("deepspeed_config") or {}).get("zero_stage")
    return int(stage) if stage is not None else None
