"""Figures in the style of the paper: Pareto fronts per model and N, length histograms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from iama_eval.evaluate import Row


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def interval_errorbar(ax: Any, xs: list[dict[str, Any]], ys: list[dict[str, Any]], **style: Any) -> None:
    """Points at ``mean`` with bars to their ``ci95`` on both axes (``{"mean", "ci95"}`` cells,
    as the sweep and KL-path summaries hold them)."""
    x = np.array([c["mean"] for c in xs])
    y = np.array([c["mean"] for c in ys])
    xerr = np.abs(np.array([c["ci95"] for c in xs]).T - x)
    yerr = np.abs(np.array([c["ci95"] for c in ys]).T - y)
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker="o", ms=4, capsize=2, **style)


def pareto_plot(rows: list[Row], names: list[str], algorithm: str, path: Path) -> None:
    plt = _plt()
    a, b = names[:2]
    models = sorted({r.model for r in rows})
    budgets = sorted({r.budget for r in rows})
    fig, ax = plt.subplots(figsize=(6.5, 5))
    colors = plt.get_cmap("tab10")
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    for mi, model in enumerate(models):
        for bi, n in enumerate(budgets):
            pts = [
                (r.normalized[a], r.normalized[b])
                for r in rows
                if r.model == model and r.algorithm == algorithm and r.budget == n
            ]
            if not pts:
                continue
            x, y = np.array(pts).T
            ax.plot(
                x,
                y,
                marker=markers[bi % len(markers)],
                color=colors(mi),
                alpha=0.35 + 0.65 * (bi + 1) / len(budgets),
                label=f"{model} N={n}",
                linewidth=1.2,
                markersize=4,
            )
    ax.set_xlabel(f"{a} (normalised)")
    ax.set_ylabel(f"{b} (normalised)")
    ax.set_title(f"Reward trade-off under {'best-of-N' if algorithm == 'bon' else 'soft best-of-N'}")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def length_histogram(lengths: dict[str, np.ndarray], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    top = max(int(v.max()) for v in lengths.values()) + 1
    bins = np.linspace(0, top, min(40, top) + 1)
    for model, v in lengths.items():
        ax.hist(v.ravel(), bins=bins, alpha=0.45, label=f"{model} (mean {v.mean():.1f})", density=True)
    ax.set_xlabel("response length (tokens)")
    ax.set_ylabel("density")
    ax.set_title("Response lengths of samples from each model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
