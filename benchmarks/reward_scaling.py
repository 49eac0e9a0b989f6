"""Does dividing the surrogate by its group std (TRL's ``scale_rewards: group``) change what
non-linear GRPO optimises? Exact mirror descent on the paper's Prop. 3.1 toy, with β > 0.

    python benchmarks/reward_scaling.py --out benchmarks/results/reward_scaling/reward_scaling.json

Support: y on a 100-point grid of [0, 1], π_ref uniform, r1 = 1 − y², r2 = 1 − (1 − y)², both
tasks BoN_4, g = ½R1 + ½R2, J = g − β·KL[π‖π_ref]. A population version of GRPO's update, in
the KL (mirror) geometry, with the same penalty TRL adds to the loss:

    none:   π ← π·exp(η·(r̃ − β·log(π/π_ref)))          (the exact gradient of J)
    group:  π ← π·exp(η·(r̃/σ_π(r̃) − β·log(π/π_ref)))   (rewards scaled, the KL term not)

σ_π is the surrogate's std under π (a group's std, in the limit of large groups). Reported:
the final g, KL and J (at the configured β) of each, and where "group" lands against the
g-vs-KL frontier traced by "none" over a range of β (is it on the frontier, just at another
KL, or below it?).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from iama.algorithms import bon_value
from iama.objective import Aggregation, Task
from iama.variations import objective_first_variation

K, N = 100, 4
EDGES = np.arange(K + 1) / K
Y = (EDGES[:-1] + EDGES[1:]) / 2
R1, R2 = 1 - Y**2, 1 - (1 - Y) ** 2
TASKS = [Task(algorithm="bon", n=N), Task(algorithm="bon", n=N)]
AGG = Aggregation(kind="weighted", weights=[0.5, 0.5])
REF = np.full(K, 1.0 / K)


def g_of(p: np.ndarray) -> float:
    return 0.5 * bon_value(R1, N, p) + 0.5 * bon_value(R2, N, p)


def kl_of(p: np.ndarray) -> float:
    return float(np.sum(p * np.log(p / REF)))


def run(beta: float, scale: str, eta: float = 0.5, steps: int = 6000) -> dict[str, float]:
    p = REF.copy()
    for _ in range(steps):
        r = objective_first_variation([R1, R2], TASKS, AGG, probs=p)
        r = r - np.dot(p, r)  # the group-mean baseline
        if scale == "group":
            r = r / (np.sqrt(np.dot(p, r**2)) + 1e-4)
        step = eta * (r - beta * np.log(p / REF))
        p = p * np.exp(step - step.max())
        p /= p.sum()
    g, kl = g_of(p), kl_of(p)
    return {"g": g, "kl": kl, "J": g - beta * kl}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--betas", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    ap.add_argument("--out", default="benchmarks/results/reward_scaling/reward_scaling.json")
    args = ap.parse_args()
    frontier_betas = np.geomspace(0.003, 3.0, 40)
    frontier = [run(float(b), "none") | {"beta": float(b)} for b in frontier_betas]
    fk = np.array([f["kl"] for f in frontier])
    fg = np.array([f["g"] for f in frontier])
    order = np.argsort(fk)
    results = []
    for beta in args.betas:
        none, group = run(beta, "none"), run(beta, "group")
        g_on_frontier = float(np.interp(group["kl"], fk[order], fg[order]))
        results.append(
            {
                "beta": beta,
                "none": none,
                "group": group,
                "group_J_minus_none_J": group["J"] - none["J"],
                "frontier_g_at_group_kl": g_on_frontier,
                "group_g_below_frontier": g_on_frontier - group["g"],
            }
        )
        print(
            f"β={beta}: none g={none['g']:.4f} KL={none['kl']:.4f} J={none['J']:.4f} | "
            f"group g={group['g']:.4f} KL={group['kl']:.4f} J={group['J']:.4f} | "
            f"frontier g at group's KL {g_on_frontier:.4f}"
        )
    out = {
        "setup": {"grid": K, "N": N, "weights": [0.5, 0.5], "eta": 0.5, "steps": 6000},
        "results": results,
        "frontier_none": frontier,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
