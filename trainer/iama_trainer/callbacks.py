"""Trainer callbacks: JSONL metrics, adaptive β, crash-safe checkpoint bookkeeping, and weight
snapshots along training (for evaluating every point of the KL path)."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from iama.files import atomic_write_json, make_readable

COMPLETE = "iama-complete.json"
STATE = "iama-state.json"


class JsonlMetrics(TrainerCallback):
    """One JSON object per logging step: raw rewards per function, surrogate, KL, β, length."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, **{k: v for k, v in logs.items() if _jsonable(v)}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def _jsonable(v: Any) -> bool:
    return isinstance(v, (int, str, bool)) or (isinstance(v, float) and math.isfinite(v))


class AdaptiveBeta(TrainerCallback):
    """Update the trainer's β from the KL TRL measured over the last logging window."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_log(self, args, state, control, logs=None, **kwargs):
        ctl = self.trainer.kl_controller
        if ctl is not None and logs and logs.get("kl") is not None:
            self.trainer.beta = ctl.update(float(logs["kl"]), args.logging_steps)


class CheckpointBookkeeping(TrainerCallback):
    """After HF saved ``checkpoint-N`` completely, record IAMA state and a completion marker.

    ``--resume`` only trusts checkpoints with the marker: a run killed mid-save falls back to
    the previous complete checkpoint instead of loading a torn one.
    """

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not ckpt.is_dir():
            return
        ctl = self.trainer.kl_controller
        atomic_write_json(
            ckpt / STATE, {"beta": float(self.trainer.beta), "kl_controller": ctl.state() if ctl else None}
        )
        atomic_write_json(ckpt / COMPLETE, {"step": state.global_step})


def checkpoint_step(path: Path) -> int | None:
    """N of an HF ``checkpoint-N`` directory; None for anything else."""
    suffix = path.name.split("-")[-1]
    return int(suffix) if path.name.startswith("checkpoint-") and suffix.isdigit() else None


def latest_complete_checkpoint(ckpt_root: Path) -> Path | None:
    if not ckpt_root.is_dir():
        return None
    done = [p for p in ckpt_root.glob("checkpoint-*") if (p / COMPLETE).is_file() and checkpoint_step(p) is not None]
    return max(done, key=lambda p: checkpoint_step(p) or 0, default=None)


SNAPSHOTS = "snapshots"


def snapshot_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def list_snapshots(root: Path) -> dict[int, Path]:
    """Complete snapshots under ``root`` by step (a torn one has no ``config.json`` yet)."""
    out = {}
    for p in sorted(root.glob("step-*")) if root.is_dir() else []:
        suffix = p.name.split("-")[-1]
        if suffix.isdigit() and (p / "config.json").is_file():
            out[int(suffix)] = p
    return out


class Snapshots(TrainerCallback):
    """Every ``every`` steps, the policy's weights (no optimizer state: 4 bytes a parameter) as
    a loadable HF model under ``root/step-NNNNNN``.

    TRL's checkpoints keep only the last few (they carry the optimizer, 3× the size); comparing
    methods at matched KL needs the whole path, so each point is evaluated later
    (``iama sweep`` with ``eval.snapshots``). Written to a temporary directory and renamed, so
    a crash never leaves a half-written snapshot that looks complete (:func:`write_model_dir`).
    """

    def __init__(self, trainer: Any, tokenizer: Any, root: Path, every: int) -> None:
        self.trainer, self.tokenizer, self.root, self.every = trainer, tokenizer, root, every

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every or not state.is_world_process_zero:
            return
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        write_model_dir(model, self.tokenizer, snapshot_dir(self.root, state.global_step))


def write_model_dir(
    model: Any,
    tokenizer: Any,
    final: Path,
    extra: Callable[[Path], object] | None = None,
    state_dict: dict[str, Any] | None = None,
) -> None:
    """An HF model directory written whole or not at all: saved (plus ``extra``, e.g. the model
    card) into a temporary sibling, made readable to other users, then renamed into place.
    Snapshots and the final model share it. ``state_dict``: the weights when the model's own
    are not whole here (DeepSpeed ZeRO-3 partitions them; accelerate gathers them)."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    if extra is not None:
        extra(tmp)
    make_readable(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
