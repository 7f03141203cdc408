"""Figures and prose of the anatomy notebook: class x concept heatmaps per method, the ablation
drops against random sets, the heterogeneity lens (kept width against detectors per layer), and the
sentences of the findings."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def plot_concepts(counts: dict[str, pd.DataFrame], title: str):
    """One class x concept heatmap per method (cells: detectors of the method's set with that label)."""
    fig, axes = plt.subplots(1, len(counts), figsize=(4.5 * len(counts), 4.2), squeeze=False)
    for ax, (m, df) in zip(axes[0], counts.items()):
        if df.shape[1] == 0:
            ax.text(0.5, 0.5, "no detectors in the sets", ha="center", va="center")
            ax.set_axis_off()
        else:
            im = ax.imshow(df.to_numpy(), cmap="Blues", aspect="auto", vmin=0)
            ax.set_xticks(range(df.shape[1]), df.columns, rotation=90, fontsize=7)
            fig.colorbar(im, ax=ax, fraction=0.04, label="detectors")
        ax.set_yticks(range(df.shape[0]), df.index, fontsize=8)
        ax.set_title(m)
        ax.set_xlabel("concept (category:label)")
        ax.set_ylabel("class")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_ablation(abl: pd.DataFrame, title: str):
    """Per method: the own-class and other-class accuracy drops of its sets and of random sets of their size."""
    methods = list(dict.fromkeys(abl["method"]))
    cols = ["own drop", "random own drop", "other drop", "random other drop"]
    means = abl.groupby("method", sort=False)[cols].mean().reindex(methods)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    x = np.arange(len(methods))
    for i, col in enumerate(cols):
        ax.bar(x + (i - 1.5) * 0.2, means[col], 0.2, label=col)
    ax.set_xticks(x, methods)
    ax.set_ylabel("accuracy drop (mean over classes)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def describe_agreement(agree: pd.DataFrame) -> str:
    parts = [f"{r['pair']}: Jaccard {r['jaccard']:.2f} against {r['random']:.2f} for random sets of the same sizes "
             f"(difference {r['difference']}, {r['verdict (above random)']})" for _, r in agree.iterrows()]
    return "Agreement of the class sets at the compared layer, over classes: " + "; ".join(parts) + "."


def describe_ablation(summary: pd.DataFrame) -> str:
    parts = [f"{r['method']} (mean {r['mean size']:.1f} units) drops its class by {r['own drop']:.3f} and the others "
             f"by {r['other drop']:.3f}; excess over random sets {r['own drop - random']} "
             f"({r['necessary (above random)']})" for _, r in summary.iterrows()]
    return "Zeroing each class's set: " + "; ".join(parts) + "."


def describe_truth(summary: pd.DataFrame) -> str:
    parts = [f"{r['method']}: precision {r['precision']:.2f} (excess over random {r['precision - random']}, "
             f"{r['precision verdict']}), recall {r['recall']:.2f} (excess {r['recall - random']}, {r['recall verdict']})"
             for _, r in summary.iterrows()]
    return "Against the planted defining concepts: " + "; ".join(parts) + "."


def describe_ranking(rank: pd.DataFrame) -> str:
    parts = [f"{r['question']}: {r['order (best first)']} (first against runner-up {r['first - runner-up']}, "
             f"{r['first separated']})" for _, r in rank.iterrows()]
    firsts = {r["order (best first)"].split(" > ")[0] for _, r in rank.iterrows() if r["first separated"] == "held"}
    verdict = ("No method is first on every question: " + " and ".join(sorted(firsts)) + " each win where the "
               "interval separates them." if len(firsts) > 1 else
               f"Where the interval separates first and runner-up, {firsts.pop()} is first." if firsts else
               "No question separates the first method from the runner-up.")
    return "Ranking over classes: " + "; ".join(parts) + ". " + verdict


def plot_width_detectors(table: pd.DataFrame, modes, title: str):
    """Per layer of the baseline: its detector share (x) against the share of the widened width each
    LW-DNA keeps (y), one marker per scoring mode, each layer named."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for marker, m in zip("os^v", modes):
        ax.scatter(table["detector share"], table[f"kept share ({m})"], marker=marker, label=f"LW-DNA ({m})")
    for _, r in table.iterrows():
        ax.annotate(r["layer"], (r["detector share"], r[f"kept share ({modes[0]})"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("detector share of the baseline's units")
    ax.set_ylabel("kept share of the widened width")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def describe_hetero(summary: pd.DataFrame, lens) -> str:
    """One sentence per scoring mode on the rank correlation, and what it rests on."""
    parts = [f"{r['score']}: Spearman rho {r['rho']:+.2f} {r['interval']} over {r['layers']} layers (permutation "
             f"p = {r['permutation p']:.2f}; rho > 0 {r['verdict (rho > 0)']})" for _, r in summary.iterrows()]
    return (f"Heterogeneity lens (one baseline, seed {lens.seed}, {lens.data_label}, validation accuracy "
            f"{lens.baseline_acc:.3f}): does the LW-DNA keep more width where the baseline has more detectors? "
            + "; ".join(parts) + ". One model with few layers: the interval, not the point estimate, is the answer.")
