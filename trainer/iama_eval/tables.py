"""The CSV tables next to each command's JSON summary: ``results.csv`` and ``kl_path.csv``.

A summary that a command already computed goes in; one row per (model, algorithm, N, weights)
of ``iama eval``, per (model, weights, N) of ``iama sweep``, or per (method, step) of the KL
path comes out, each ``{"mean", "ci95"}`` cell as three columns (mean, low, high).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from iama_eval.evaluate import Row


def write_eval_csv(rows: list[Row], names: list[str], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "model",
                "algorithm",
                "budget",
                "weights",
                *[f"{n}_raw" for n in names],
                *[f"{n}_normalized" for n in names],
                "weighted",
                "mean_tokens",
            ]
        )
        for r in rows:
            w.writerow(
                [
                    r.model,
                    r.algorithm,
                    r.budget,
                    json.dumps(r.weights),
                    *[r.raw[n] for n in names],
                    *[r.normalized[n] for n in names],
                    r.weighted,
                    r.mean_tokens,
                ]
            )


def write_sweep_csv(summary: dict[str, Any], path: Path) -> None:
    names = summary["tasks"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        header = ["model", "weights", "budget"]
        for n in [*names, "g"]:
            header += [f"{n}_mean", f"{n}_ci_lo", f"{n}_ci_hi"]
        w.writerow([*header, "kl_per_seed"])
        for row in summary["rows"]:
            cells = [row["model"], json.dumps(row["weights"]), row["budget"]]
            for n in [*names, "g"]:
                cells += [row[n]["mean"], *row[n]["ci95"]]
            w.writerow([*cells, json.dumps(row["kl"])])


def write_path_csv(summary: dict[str, Any], path: Path) -> None:
    cols = [k for k in summary["path"][0] if k not in ("method", "step", "kl", "kl_per_seed")]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["method", "step", "kl_mean", "kl_lo", "kl_hi", *[f"{c}_{s}" for c in cols for s in ("mean", "lo", "hi")]]
        )
        for r in summary["path"]:
            cells = [r["method"], r["step"], r["kl"]["mean"], *r["kl"]["ci95"]]
            for c in cols:
                cells += [r[c]["mean"], *r[c]["ci95"]]
            w.writerow(cells)
