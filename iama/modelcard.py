"""``iama.json``: what a trained checkpoint was meta-aligned for.

Written by the trainer next to the HF checkpoint and read by the server (which rewards to
serve, how to normalise them, which tasks the model is good at) and by ``iama eval``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from iama.files import atomic_write_json
from iama.objective import Objective, ObjectiveType
from iama.rewards.reward_set import RewardSpec

CARD_FILE = "iama.json"


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = 1
    base_model: str
    rewards: dict[str, RewardSpec]
    objective: Objective | None = None
    objective_type: ObjectiveType = "iama"
    beta: float | None = None
    kl: float | None = Field(
        default=None,
        description="KL[pi||pi_ref] reached at the end of training: TRL's logged per-token k3 estimate, "
        "averaged over the last 5 logged steps (one step's estimate is noisy)",
    )
    training: dict[str, Any] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def load_model_card(model_dir: str | os.PathLike[str]) -> ModelCard | None:
    """The card of a local checkpoint, or ``None`` for a model without one (served with defaults)."""
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        return None
    return ModelCard.model_validate_json(path.read_text())


def save_model_card(card: ModelCard, model_dir: str | os.PathLike[str]) -> Path:
    """Atomic write (temp file + rename) so a reader never sees half a card."""
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CARD_FILE, card.model_dump(mode="json"))
    return out / CARD_FILE
