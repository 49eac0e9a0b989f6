"""The plotting setup and the figures of ``iama eval``, ``iama sweep`` and ``iama probe``.

Summaries that the commands already computed go in (rows, ``{"mean", "ci95"}`` cells, counted
histograms); PNG files come out. :func:`pyplot` is the one place that selects matplotlib's
file-only Agg backend (no display on a training node) and imports pyplot: every figure,
here and in :mod:`iama_eval.path_plots`, goes through it. Nothing here computes a statistic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from iama.objective import Task
from iama_eval.distributions import binned, from_json_values, scalar_bins
from iama_eval.evaluate import Row

COLORS = {"iama": "tab:red", "linear": "tab:blue", "base": "black"}  # one color per method, every figure


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only), imported on first use: heavy."""
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
    plt = pyplot()
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
    plt = pyplot()
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


def plot_fronts(summary: dict[str, Any], tasks: list[Task], budgets: list[int], out: Path) -> list[str]:
    """Task 1 vs task 2 per N: one curve per objective type over the weights, 95 % intervals."""
    if len(tasks) < 2:
        return []
    plt = pyplot()
    a, b = summary["tasks"][:2]
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 4), squeeze=False)
    for ax, n in zip(axes[0], budgets, strict=True):
        for model in sorted({r["model"] for r in summary["rows"]}):
            rows = [r for r in summary["rows"] if r["model"] == model and r["budget"] == n]
            interval_errorbar(
                ax,
                [r[a] for r in rows],
                [r[b] for r in rows],
                label=model,
                color=COLORS.get(model),
                linestyle="-" if model != "base" else "none",
            )
        ax.set_title(f"N = {n}" + (" (no BoN)" if n == 1 else ""))
        ax.set_xlabel(a)
        ax.set_ylabel(b)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "fronts.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]


def plot_probe(summary: dict[str, Any], path: Path) -> Path:
    """Length histogram (truncated counted apart) and, for the shared scalar, the base marginal
    with the predicted IAMA and linear optima at each matched KL."""
    plt = pyplot()
    pred = summary.get("prediction")
    fig, axes = plt.subplots(1, 2 if pred else 1, figsize=(11 if pred else 5.5, 3.8), squeeze=False)
    ax = axes[0][0]
    tokens = np.asarray(summary["samples"]["tokens"])
    trunc = np.asarray(summary["samples"]["truncated"], dtype=bool)
    bins = np.linspace(0, summary["max_tokens"], 33)
    ax.hist(
        [tokens[~trunc], tokens[trunc]],
        bins=bins,
        stacked=True,
        label=["ended", "cut at cap"],
        color=["tab:gray", "tab:orange"],
    )
    ax.set_xlabel("completion tokens")
    ax.set_ylabel("base samples")
    ax.set_title(f"base lengths ({summary['length']['truncated_fraction']:.0%} at the cap)")
    ax.legend(fontsize=8)
    if pred:
        ax = axes[0][1]
        support = from_json_values(pred["support"])
        ok = np.isfinite(support)
        base = pred["rows"][0]
        bins = scalar_bins(support[ok], np.asarray(base["probs"])[ok])
        mass0 = binned(support[ok], np.asarray(base["probs"])[ok], bins)
        ax.bar(bins[:-1], mass0, width=np.diff(bins), align="edge", color="lightgray", label="base")
        for r in pred["rows"][-2:]:  # the last matched-KL pair (or the config's β)
            mass = binned(support[ok], np.asarray(r["probs"])[ok], bins)
            ax.step(
                bins[:-1],
                mass,
                where="post",
                color=COLORS[r["method"]],
                label=f"{r['method']} optimum (KL {r['kl']:.2f}, g {r['g']:.3f})",
            )
        missing = 1 - float(np.sum(np.asarray(base["probs"])[ok]))
        note = f"; no value: {missing:.0%} of base" if missing > 0 else ""
        ax.set_xlabel(f"{pred['scalar']} (values beyond {bins[-1]:g} in the last bin{note})")
        ax.set_ylabel("probability")
        ax.set_title("base marginal and predicted optima")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
