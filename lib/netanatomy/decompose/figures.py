"""Figures and findings prose of the decomposition notebook: frequency heatmap, k sweep, finetuning
curve, essentiality bars, the random controls' intervals, and the `describe_*` sentences the
notebook states as findings. Plots per class show at most `MAX_CLASSES` classes (ImageNet has 1,000)."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..stats import HELD, INCONCLUSIVE, NOT_HELD
from .method import PUBLISHED, check_indices
from .run import CSGResult, Config, Setup
from .tables import MI_COLUMNS, OVERLAP_CLAIM

#: Per-class plots show the first this many classes.
MAX_CLASSES = 30


# ============================================================================ plots
def plot_frequencies(freq: np.ndarray, classes: Sequence[str], indices: Mapping | None = None, k: int | None = None,
                     title: str | None = None):
    """Heatmap classes x features of the top-k frequency histograms; the chosen S_c marked with dots."""
    C, D = freq.shape
    shown = min(C, MAX_CLASSES)
    fig, ax = plt.subplots(figsize=(min(18, 4 + D * 0.12), 1.2 + 0.35 * shown))
    share = freq[:shown] / np.maximum(freq[:shown].sum(1, keepdims=True), 1) * (k or 1)
    sns.heatmap(share, ax=ax, cmap="viridis", cbar_kws={"label": "fraction of the class's images with the feature in top-k"},
                yticklabels=list(classes)[:shown], xticklabels=max(1, D // 16))
    if indices is not None:
        for c, vals in check_indices(indices, equal_sizes=False).items():
            if c < shown:
                ax.scatter(np.asarray(vals) + 0.5, np.full(len(vals), c + 0.5), s=10, c="red", marker="o")
    ax.set_xlabel("feature index (pooled channel)")
    ax.set_ylabel("class" if shown == C else f"class (first {shown} of {C})")
    ax.set_title(title or f"Top-{k} frequency per class (red: the chosen S_c)")
    fig.tight_layout()
    return fig


def plot_k_sweep(df: pd.DataFrame, original: float, label: str):
    """Decomposed accuracy versus k, one line per n, with the original accuracy dashed."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    sns.lineplot(data=df, x="k", y="decomposed acc (%)", hue="n", marker="o", ax=ax, palette="deep")
    ax.axhline(100 * original, color="k", ls="--", lw=1, label="original")
    ax.set_xlabel("k (top features per image)")
    ax.set_ylabel(f"accuracy (%), {label}")
    ax.set_title("Decomposed accuracy versus k")
    ax.legend(title="n")
    fig.tight_layout()
    return fig


def plot_finetune(table: pd.DataFrame, original: float):
    """Decomposed accuracy per finetuning epoch, with the original accuracy dashed."""
    col = [c for c in table.columns if c.startswith("decomposed acc")][0]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(table["epoch"], table[col], marker="o", label="decomposed, finetuned")
    ax.axhline(100 * original, color="k", ls="--", lw=1, label="original")
    ax.set_xlabel("finetuning epoch (0 = before)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(col.replace("decomposed acc (%) ", "Finetuning, "), fontsize=9)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_essentiality(table: pd.DataFrame, title: str):
    """Bars per class: images still correct under noise, per method and noise location."""
    df = table[table["class"].isin(table["class"].unique()[:MAX_CLASSES])].copy()
    df["run"] = df["method"] + ", noise at " + df["noise at"]
    df["still correct (%)"] = 100 * df["correct with noise"] / df["images"].clip(lower=1)
    fig, ax = plt.subplots(figsize=(max(7, 0.8 * df["class"].nunique() + 3), 4))
    sns.barplot(data=df, x="class", y="still correct (%)", hue="run", ax=ax, palette="Paired")
    ax.set_xlabel("class" if df["class"].nunique() == table["class"].nunique() else f"class (first {MAX_CLASSES})")
    ax.set_ylabel("images still correct (%)")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="indices, noise location")
    fig.tight_layout()
    return fig


VERDICT_COLOURS = {HELD: "tab:green", NOT_HELD: "tab:red", INCONCLUSIVE: "tab:gray"}


def plot_controls(table: pd.DataFrame):
    """Each accuracy claim's difference from its control (points) with its 95 % interval, coloured by verdict."""
    df = table[table["unit"].str.endswith("images")].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(12, 0.9 + 0.38 * len(df)))
    y = np.arange(len(df))[::-1]
    for yi, (_, row) in zip(y, df.iterrows()):
        ax.errorbar(row["difference"], yi, xerr=[[row["difference"] - row["95% low"]], [row["95% high"] - row["difference"]]],
                    fmt="o", color=VERDICT_COLOURS[row["verdict"]], capsize=3)
    ax.axvline(0, color="k", lw=1, ls="--")
    ax.set_yticks(y, [f"{r['indices']}: {r['claim']}" for _, r in df.iterrows()], fontsize=7)
    ax.set_xlabel("difference from the control (points of accuracy), 95 % interval over images")
    ax.set_title("Against random controls (green: held, red: did not hold, grey: inconclusive)", fontsize=9)
    fig.tight_layout()
    return fig


# ============================================================================ findings
def describe_setup(S: Setup) -> list[str]:
    """The run's data notes, then the original accuracy."""
    return [f"- {note}" for note in S.notes] + [
        f"Original accuracy: **{100 * S.feats_eval.accuracy():.2f} %** on {S.eval_label}; "
        f"{S.num_features} pooled features, {len(S.classes)} classes."]


def describe_overlap(table: pd.DataFrame) -> list[str]:
    """Per published file, k and part: the indices ours share with it, against chance, with the verdict."""
    return [f"Ours (k = {r['our k']}, n = {r['published n']}, extracted on {r['extracted on']}) share {r['shared']} "
            f"of {r['of']} indices with the published n = {r['published n']} file (random sets: {r['chance']:.1f} "
            f"expected); excess per class {r['excess per class']:+.2f} [{r['95% low']:+.2f}, {r['95% high']:+.2f}] "
            f"over {r['unit']}: {OVERLAP_CLAIM}: **{r['verdict']}**" for _, r in table.iterrows()]


def describe_csg(csg: CSGResult | None, S: Setup) -> str:
    if csg is None:
        return "No CSG baseline in this run (csg_epochs 0 and no csg_checkpoint)."
    return f"CSG model ({csg.source}): standard-path accuracy {100 * csg.feats_eval.accuracy():.2f} % on {S.eval_label}."


def describe_controls(table: pd.DataFrame) -> list[str]:
    """One finding per claim: the difference from the control with its 95 % interval, unit and verdict."""
    lines = []
    for _, r in table.iterrows():
        accuracy = r["unit"].endswith("images")
        value = (f"{r['difference']:+.2f} points [{r['95% low']:+.2f}, {r['95% high']:+.2f}]" if accuracy else
                 f"{r['difference']:+.4f} nats [{r['95% low']:+.4f}, {r['95% high']:+.4f}]")
        lines.append(f"{r['indices']}: {r['claim']}: {value} over {r['unit']} "
                     f"({r['draws <= 0']} random draws not above): **{r['verdict']}**")
    return lines


def describe_legacy_mi(mi: pd.DataFrame) -> list[str]:
    """Upstream's MI reproduced from the published files (n = 5), beside upstream's own numbers
    (`method.PUBLISHED`); nothing when the table lacks either published row."""
    legacy = mi.set_index("indices")[MI_COLUMNS[True]]
    ours, csg = "published ours (n=5)", "CSG published file (legacy, n=5)"
    if ours not in legacy or csg not in legacy:
        return []
    return [f"Legacy reproduction from the published files (k = 5, upstream convention): ours **{legacy[ours]:.6f}** "
            f"(upstream {PUBLISHED['MI ours (k=5)']:.6f}) vs CSG **{legacy[csg]:.6f}** "
            f"(upstream {PUBLISHED['MI CSG (k=5)']:.6f}). Upstream: the values in akshaybadola/decomposing-the-deep "
            "mutual_info.py, commit 3f6c20c."]


def describe_summary(S: Setup, acc: pd.DataFrame, ft: pd.DataFrame, mi: pd.DataFrame, cfg: Config) -> str:
    """Original, decomposed and finetuned accuracy on the eval part, and MI ours (versus CSG's, if any)."""
    column = f"acc (%) {S.eval_label}"
    convention = MI_COLUMNS[cfg.mi_self_pairs]
    row = mi.set_index("indices")[convention]
    csg = f"CSG largest gates (n={cfg.n})"
    versus = f" vs CSG largest gates {row[csg]:.4f}" if csg in row else ""
    return (f"**Summary** ({S.eval_label}): original {acc[column].iloc[0]:.2f} %, decomposed (ours, n={cfg.n}) "
            f"{acc[column].iloc[1]:.2f} %, finetuned after {int(ft['epoch'].iloc[-1])} epoch(s) {ft.iloc[-1, 1]:.2f} %; "
            f"MI ({convention}) ours {row[f'ours (k={cfg.k}, n={cfg.n})']:.4f}{versus}.")
