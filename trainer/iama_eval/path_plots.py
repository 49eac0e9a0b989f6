"""Figures of the KL path: g against KL, each user's reward by N, N = 1 histograms.

``kl_path.json``'s summary (rows of ``{"mean", "ci95"}`` cells) and ``path_scores.json``'s
points go in; ``kl_path.png``, ``bon_by_n.png`` and ``histograms.png`` come out, drawn through
:func:`iama_eval.plots.pyplot`. The histograms' counting is :mod:`iama_eval.distributions`'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from iama_eval.distributions import binned, from_json_values, last_step_pools, outside, pooled_bins
from iama_eval.matched_kl import MethodPath
from iama_eval.plots import COLORS, interval_errorbar, pyplot


def plot_path(summary: dict[str, Any], path: Path) -> Path:
    """g against KL: each method's measured snapshots (filled, with 95 % intervals; the thin line
    only joins them), linear's path interpolated at IAMA's KLs for the matched comparison
    (hollow), and the predicted optima (dashed)."""
    plt = pyplot()
    n = summary["own_n"]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method in summary["seeds"]:
        rows = [r for r in summary["path"] if r["method"] == method]
        interval_errorbar(
            ax,
            [r["kl"] for r in rows],
            [r[f"g@{n}"] for r in rows],
            color=COLORS[method],
            lw=0.8,
            label=f"{method}: measured snapshots (mean of {len(summary['seeds'][method])} seeds)",
        )
    matched = [r for r in summary.get("matched_kl", []) if np.isfinite(r[f"linear_g@{n}"])]
    if matched:
        ax.scatter(
            [r["kl"] for r in matched],
            [r[f"linear_g@{n}"] for r in matched],
            facecolors="none",
            edgecolors=COLORS["linear"],
            s=40,
            zorder=3,
            label="linear interpolated at IAMA's KL (not measured)",
        )
    pred = summary.get("prediction")
    if pred:
        for method in ("iama", "linear"):
            pts = sorted((r["kl"], r["g"]) for r in pred["rows"] if r["method"] == method)
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                ls="--",
                color=COLORS[method],
                alpha=0.6,
                label=f"{method} optimum (predicted)",
            )
    ax.set_xscale("symlog", linthresh=0.05)
    ax.set_xlabel("sequence KL to the base (held-out samples)")
    ax.set_ylabel(f"g under BoN_{n} (held-out prompts)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bon(summary: dict[str, Any], path: Path) -> Path:
    """Each user's reward under BoN_N of each method's last snapshot (and the base)."""
    plt = pyplot()
    budgets, names = summary["budgets"], summary["tasks"]
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4.2 * (len(names) + 1), 3.8), squeeze=False)
    finals = {
        m: max((r for r in summary["path"] if r["method"] == m), key=lambda r: r["step"]) for m in summary["seeds"]
    }
    first = next(iter(summary["seeds"]))
    shown = {"base": next(r for r in summary["path"] if r["method"] == first and r["step"] == 0), **finals}
    for ax, name in zip(axes[0], [*names, "g"], strict=True):
        for label, r in shown.items():
            y = np.array([r[f"{name}@{n}"]["mean"] for n in budgets])
            err = np.abs(np.array([r[f"{name}@{n}"]["ci95"] for n in budgets]).T - y)
            kl = r["kl"]["mean"]
            ax.errorbar(
                budgets,
                y,
                yerr=err,
                marker="o",
                ms=4,
                capsize=2,
                color=COLORS.get(label, "gray"),
                label=f"{label} (KL {kl:.2f})" if label != "base" else "base",
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("N (best-of-N with this user's reward)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_histograms(
    data: dict[str, Any],
    paths: dict[str, MethodPath],
    summary: dict[str, Any],
    path: Path,
    targets: list[float] | None = None,
) -> Path | None:
    """N = 1 histograms of the scalar at each method's last snapshot, seeds pooled, over the
    bulk and the users' ``targets`` (marked); what falls outside, and "no value", is counted in
    each title, never squeezed into the end bars."""
    if not data.get("scalar"):
        return None
    plt = pyplot()
    pools = last_step_pools(data["points"], {m: a.steps[-1] for m, a in paths.items()})
    bins = pooled_bins(pools, targets)
    fig, axes = plt.subplots(1, len(pools), figsize=(4.2 * len(pools), 3.6), squeeze=False, sharey=True)
    pred = summary.get("prediction")
    for ax, (label, x) in zip(axes[0], pools.items(), strict=True):
        inside = x[np.isfinite(x) & (x >= bins[0]) & (x <= bins[-1])]
        ax.hist(
            inside,
            bins=bins,
            weights=np.full(inside.size, 1 / max(x.size, 1)),
            color=COLORS.get(label.split()[0], "gray"),
            alpha=0.7,
        )
        for t in targets or []:
            ax.axvline(t, color="k", ls=":", lw=1)
        method = label.split()[0]
        if pred and method in ("iama", "linear"):
            kl = float(paths[method].kl[:, -1].mean())
            cands = [r for r in pred["rows"] if r["method"] == method]
            r = min(cands, key=lambda r: abs(r["kl"] - kl))
            support = from_json_values(pred["support"])
            sel = np.isfinite(support) & (support >= bins[0]) & (support <= bins[-1])
            mass = binned(support[sel], np.asarray(r["probs"])[sel], bins)
            ax.step(bins[:-1], mass, where="post", color="k", lw=1, label=f"predicted optimum, KL {r['kl']:.2f}")
            ax.legend(fontsize=7)
        below, above, none = outside(x, bins)
        ax.set_title(
            f"{label}: {none:.0%} no value, {below:.0%} < {bins[0]:.0f}, {above:.0%} > {bins[-1]:.0f}", fontsize=8
        )
        ax.set_xlabel(str(data["scalar"]))
    axes[0][0].set_ylabel("fraction of samples")
    fig.suptitle("N = 1 samples on the held-out prompts, seeds pooled; dotted: the users' targets", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
