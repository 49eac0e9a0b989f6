"""Prompt datasets in TRL's format: a ``prompt`` column, conversational when ``chat`` is set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iama_trainer.config import PromptsConfig

BUILTIN = Path(__file__).parent / "data" / "prompts.jsonl"


def load_prompt_texts(cfg: PromptsConfig) -> list[str]:
    import datasets

    src = cfg.source
    if src == "builtin":
        ds = datasets.load_dataset("json", data_files=str(BUILTIN), split="train")
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
    texts = [str(t) for t in ds[cfg.field] if str(t).strip()]
    if cfg.limit:
        texts = texts[: cfg.limit]
    if not texts:
        raise ValueError("the prompt set is empty")
    return texts


def to_trl_prompt(text: str, cfg: PromptsConfig) -> Any:
    if not cfg.chat:
        return text
    msgs = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    return [*msgs, {"role": "user", "content": text}]


def build_dataset(cfg: PromptsConfig):  # -> datasets.Dataset
    import datasets

    texts = load_prompt_texts(cfg)
    return datasets.Dataset.from_dict({"prompt": [to_trl_prompt(t, cfg) for t in texts]})
