"""How much of a snapshot's sequence KL the predictor sees (pure).

:mod:`iama.optimum` predicts on the scalar the rewards read (the number, the length): its optima
keep the base's text *within* each value, so their KL is the scalar's marginal KL alone. A
trained policy moves more than that. By the chain rule
``KL(π‖π_ref) = KL(p‖p₀) + E_{x~p} KL(π(·|x)‖π_ref(·|x))``, so each evaluated point of the KL
path splits into the marginal part (:func:`iama.optimum.marginal_kl` between the point's and the
base's samples of the scalar, prompts pooled as the predictor pools them) and the rest (the
text within a value, and how the marginal differs from prompt to prompt): the predictor's limit
as a number. The base's samples split in two halves give the marginal estimate's noise floor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from iama.optimum import marginal_kl
from iama_eval.distributions import from_json_values


def kl_split(points: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per point of ``path_scores.json`` (its samples' scalar and log-ratios): the sequence KL,
    its marginal part and the rest; per (method, step) their means over seeds; and the floor."""
    base = from_json_values(points["base@0"]["scalar"]).reshape(-1)
    half = base.size // 2
    rows = []
    for key, p in sorted(points.items(), key=lambda kv: (kv[1]["method"], kv[1]["seed"] or 0, kv[1]["step"])):
        if p["method"] == "base" or p.get("scalar") is None:
            continue
        sequence = float(np.mean(p["log_ratio"]))
        marginal = marginal_kl(from_json_values(p["scalar"]).reshape(-1), base)
        rows.append(
            {
                "point": key,
                "method": p["method"],
                "seed": p["seed"],
                "step": p["step"],
                "kl_sequence": sequence,
                "kl_marginal": marginal,
                "kl_rest": sequence - marginal,
                "marginal_share": marginal / sequence if sequence > 0 else float("nan"),
            }
        )
    means = []
    for method, step in sorted({(r["method"], r["step"]) for r in rows}):
        group = [r for r in rows if r["method"] == method and r["step"] == step]
        mean = {k: float(np.mean([r[k] for r in group])) for k in ("kl_sequence", "kl_marginal", "kl_rest")}
        share = mean["kl_marginal"] / mean["kl_sequence"] if mean["kl_sequence"] > 0 else float("nan")
        means.append({"method": method, "step": step, "seeds": len(group), **mean, "marginal_share": share})
    return {
        "points": rows,
        "by_step": means,
        "floor": marginal_kl(base[:half], base[half:]) if half else float("nan"),
        "note": "kl_marginal: plug-in KL of the scalar's distribution (prompts pooled, Jeffreys-smoothed) "
        "against the base's; kl_rest = kl_sequence - kl_marginal: text within a value, and the marginal's "
        "variation across prompts; floor: the same estimate between two halves of the base's own samples",
    }
