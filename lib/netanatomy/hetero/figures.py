"""The heterogeneity notebook's figures and findings prose."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..stats import FLOPS_CONVENTION
from .run import Config, Experiment


def plot_channels(table: pd.DataFrame):
    """Bar chart of output channels per conv layer (`run.channel_table`): baseline, widened and LW-DNA(s)."""
    long = table.drop(columns=["vector"]).melt(id_vars="layer", var_name="network", value_name="channels")
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(table)), 4))
    sns.barplot(data=long, x="layer", y="channels", hue="network", ax=ax)
    ax.set_xlabel("convolution (in forward order)")
    ax.set_ylabel("output channels")
    ax.set_title("Per-layer channels: baseline, widened, LW-DNA")
    ax.tick_params(axis="x", rotation=90, labelsize=7)
    fig.tight_layout()
    return fig


def plot_trace(trace: pd.DataFrame, target: float, tolerance: float):
    """FLOPs ratio and threshold per binary-search iteration (`run.search_traces`), per scoring mode."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    sns.lineplot(data=trace, x="iteration", y="flops_ratio", hue="score", marker="o", ax=axes[0])
    axes[0].axhspan(target - tolerance, target + tolerance, color="grey", alpha=0.3, label="target ± tol")
    axes[0].set_ylabel("FLOPs(kept) / FLOPs(widened), search convention")
    axes[0].set_title("Binary search: FLOPs ratio")
    sns.lineplot(data=trace, x="iteration", y="threshold", hue="score", marker="o", ax=axes[1])
    axes[1].set_yscale("symlog", linthresh=1e-4)
    axes[1].set_ylabel("global threshold (symlog)")
    axes[1].set_title("Binary search: threshold")
    for ax in axes:
        ax.set_xlabel("iteration")
    fig.tight_layout()
    return fig


def plot_accuracy_flops(exp: Experiment, acc: pd.DataFrame):
    """Validation accuracy vs MFLOPs: every seed (points) and the seed mean with its 95 % interval (bars)."""
    r = exp.runs.copy()
    r["label"] = np.where(r["network"] == "baseline", "baseline", "lw-dna (" + r["score"].astype(str) + ")")
    r["acc"], r["MFLOPs"] = 100 * r["val_acc"], r["flops"] / 1e6
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    sns.scatterplot(data=r, x="MFLOPs", y="acc", hue="label", style="label", s=60, alpha=0.6, ax=ax)
    for _, row in acc.iterrows():
        err = [[row["acc_mean"] - row["acc_low"]], [row["acc_high"] - row["acc_mean"]]] if row["n_seeds"] > 1 else None
        ax.errorbar(row["MFLOPs"], row["acc_mean"], yerr=err, fmt="k_", capsize=4, markersize=14)
    ax.set_xlabel(f"MFLOPs per image ({FLOPS_CONVENTION})")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Accuracy vs FLOPs (points: seeds; bars: mean and 95 % interval)")
    fig.tight_layout()
    return fig


def plot_differences(table: pd.DataFrame):
    """Per comparison of `run.verdicts`: the paired accuracy difference of every seed (points) and the
    mean with its 95 % interval (bar), against the zero line that decides the verdict."""
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.7 * max(len(table), 1)))
    for i, row in enumerate(table.itertuples()):
        ax.scatter(row.seed_diffs, np.full(len(row.seed_diffs), i), color="grey", alpha=0.7, zorder=2)
        if np.isfinite(row.low):
            ax.errorbar(row.diff, i, xerr=[[row.diff - row.low], [row.high - row.diff]], fmt="o", color="black",
                        capsize=5, zorder=3)
    ax.axvline(0, color="red", lw=1)
    ax.set_yticks(range(len(table)), [f"{c}\n({v})" for c, v in zip(table["comparison"], table["verdict"])])
    ax.set_xlabel("accuracy difference (points), paired by seed")
    ax.set_ylabel("comparison")
    ax.set_title("Paired differences: seeds (grey) and 95 % interval (black)")
    fig.tight_layout()
    return fig


def describe_complexity(complexity: pd.DataFrame, width_mult: float, convention: str) -> str:
    """How much the widening costs, the counts under each convention, and whether flop_counter agrees with
    the analytic count (`run.complexity_table`)."""
    base, wide = complexity.iloc[0], complexity.iloc[1]
    agree = bool((complexity["MFLOPs"] - complexity["MFLOPs_analytic"]).abs().max() < 1e-6)
    return (f"Widened x{width_mult}: {wide['MFLOPs'] / base['MFLOPs']:.2f}x the baseline FLOPs. Counts: MFLOPs "
            f"(torch.utils.flop_counter, 2 per multiply-add; equals the analytic count for every network: {agree}), "
            f"MFLOPs_hh (upstream Heterogeneity_Hypothesis get_flops: convolutions and classifier, 1 per "
            f"multiply-add; its ratios equal the torch ones) and MFLOPs_dhp (the DHP code's counter: plus BatchNorm). "
            f"The search targets ratio_{convention}.")


def describe_search(exp: Experiment) -> str:
    """Markdown: for each scoring mode and seed, whether the binary search reached the FLOPs target."""
    lines = [f"- {d['score']}, seed {d['seed']}: {d['message']} (threshold {d['threshold']:.4g})"
             for d in exp.details if d["network"] == "lw-dna"]
    return "Binary search on the global threshold (target FLOPs ratio " \
           f"{exp.config.ratio} of the widened net, {exp.config.flops_convention} convention):\n" + "\n".join(lines)


def describe_verdict(table: pd.DataFrame, cfg: Config) -> str:
    """Markdown: each comparison of `run.verdicts` with its paired interval and verdict."""
    lines = []
    for v in table.itertuples():
        interval = (f"{v.diff:+.2f} points, 95 % interval [{v.low:+.2f}, {v.high:+.2f}]" if np.isfinite(v.low)
                    else f"{v.diff:+.2f} points (one seed: no interval)")
        cost = (f" at {v.flops_ratio:.2f}x the FLOPs ({'fewer' if v.fewer_flops else 'NOT fewer'} in every seed)"
                if v.comparison.endswith("baseline") else "")
        lines.append(f"- **{v.comparison}**: {interval} over {v.n_seeds} seeds{cost} -> **{v.verdict}**.")
    return (f"On {cfg.dataset} with {cfg.model}-{cfg.depth} (x{cfg.width_mult}, ratio {cfg.ratio} "
            f"({cfg.flops_convention} FLOPs), {cfg.epochs} epochs, seeds {cfg.seed_list[0]}-{cfg.seed_list[-1]}), "
            "accuracy differences paired by seed; 'held' only when the whole interval lies above 0:\n"
            + "\n".join(lines))
