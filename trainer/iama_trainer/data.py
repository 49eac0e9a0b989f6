"""Prompt datasets in TRL's format: a ``prompt`` column, conversational when ``chat`` is set.

A prompt is a string or a conversation (``iama.rewards.Prompt``); conversations come from
``messages`` or HH-transcript columns (``PromptsConfig.format``) and keep all their turns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iama.rewards import Prompt
from iama.rewards.conversation import hh_prompt, messages_prompt
from iama_trainer.config import PromptsConfig

DATA = Path(__file__).parent / "data"
BUILTIN = DATA / "prompts.jsonl"


def builtin_file(source: str) -> Path | None:
    """``builtin`` (open-ended prompts) or ``builtin:<name>`` (``number``, ``number-heldout``:
    prompts asking for a number between 1 and 100, varied wordings; the held-out set shares
    no prompt with the training set), or None when ``source`` names no shipped set."""
    if source == "builtin":
        return BUILTIN
    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        path = DATA / f"{name}.jsonl"
        if not path.is_file():
            known = sorted(p.stem for p in DATA.glob("*.jsonl") if p != BUILTIN)
            raise ValueError(f"prompts.source {source!r}: no shipped prompt set {name!r} (known: {known})")
        return path
    return None


def load_prompts(cfg: PromptsConfig) -> list[Prompt]:
    """The prompts of the configured source: strings, or conversations without their answer."""
    import datasets

    src = cfg.source
    shipped = builtin_file(src)
    if shipped is not None:
        ds = datasets.load_dataset("json", data_files=str(shipped), split="train")
    else:
        path = Path(src).expanduser()
        if path.exists():
            kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(path.suffix)
            if kind is None:
                raise ValueError(f"prompts.source {src!r}: use .jsonl, .json, .parquet or .csv")
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        else:
            ds = datasets.load_dataset(src, split=cfg.split)  # a hub dataset name
    if cfg.field not in ds.column_names:
        raise ValueError(f"prompts.field {cfg.field!r} not in columns {ds.column_names}")
    prompts: list[Prompt] = []
    for i, value in enumerate(ds[cfg.field]):
        try:
            if cfg.format == "messages":
                prompts.append(messages_prompt(value))
            elif cfg.format == "hh":
                prompts.append(hh_prompt(str(value)))
            elif str(value).strip():
                prompts.append(str(value))
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"prompts.{cfg.field} row {i} is not a {cfg.format} conversation: {exc}") from None
    if cfg.limit:
        prompts = prompts[: cfg.limit]
    if not prompts:
        raise ValueError("the prompt set is empty")
    return prompts


def to_trl_prompt(prompt: Prompt, cfg: PromptsConfig) -> Any:
    """What TRL (and the chat template) gets: a conversation when ``chat`` is set."""
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    if not isinstance(prompt, str):
        has_system = bool(prompt) and prompt[0].get("role") == "system"
        return [*([] if has_system else system), *prompt]
    if not cfg.chat:
        return prompt
    return [*system, {"role": "user", "content": prompt}]


def build_dataset(cfg: PromptsConfig):  # -> datasets.Dataset
    import datasets

    return datasets.Dataset.from_dict({"prompt": [to_trl_prompt(p, cfg) for p in load_prompts(cfg)]})
