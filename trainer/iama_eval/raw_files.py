"""The raw files a sweep writes and every report is recomputed from.

``scores.json`` (``iama sweep``: every sample's raw rewards per model, and each model card's
KL) and ``path_scores.json`` (with ``eval.snapshots``: every point of the KL path, written
after each point so that an interrupted evaluation resumes) are the committed record of a
benchmark; ``--report`` reads them alone. Their names and layouts live here, once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from iama.files import atomic_write_json

SCORES = "scores.json"
PATH_SCORES = "path_scores.json"


def write_scores(
    out: Path, prompts: list[str], scores: dict[str, dict[str, list[list[float]]]], kls: dict[str, float | None]
) -> None:
    """``scores``: label → reward → (prompts, M) raw; ``kls``: label → the model card's KL."""
    (out / SCORES).write_text(json.dumps({"prompts": prompts, "scores": scores, "kl": kls}))


def read_scores(out: Path) -> dict[str, Any]:
    return json.loads((out / SCORES).read_text())


def read_path_scores(out: Path) -> dict[str, Any]:
    """``{"prompts", "scalar", "eval", "points"}``; empty before the first point is written."""
    path = out / PATH_SCORES
    return json.loads(path.read_text()) if path.is_file() else {}


def write_path_scores(
    out: Path, prompts: list[str], scalar: str | None, points: dict[str, Any], settings: dict[str, Any]
) -> Path:
    """All points so far (label@step → scores, tokens, scalar, log-ratios) and the evaluation
    ``settings`` that made them (another sweep reuses points only under the same), replaced atomically."""
    path = out / PATH_SCORES
    data = {"prompts": prompts, "scalar": scalar, "eval": settings, "points": points}
    atomic_write_json(path, data, indent=None)
    return path
