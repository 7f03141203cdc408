"""The heterogeneity notebook's figures and findings prose."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..stats import FLOPS_CONVENTION
from .run import Config, Experiment, versus_baseline


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
    axes[0].set_ylabel("FLOPs(kept) / FLOPs(widened)")
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
    """Validation accuracy vs MFLOPs: every seed (points) and the seed mean ± std (error bars)."""
    r = exp.runs.copy()
    r["label"] = np.where(r["network"] == "baseline", "baseline", "lw-dna (" + r["score"].astype(str) + ")")
    r["acc"], r["MFLOPs"] = 100 * r["val_acc"], r["flops"] / 1e6
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    sns.scatterplot(data=r, x="MFLOPs", y="acc", hue="label", style="label", s=60, alpha=0.6, ax=ax)
    for _, row in acc.iterrows():
        ax.errorbar(row["MFLOPs"], row["acc_mean"], yerr=row["acc_std"], fmt="k_", capsize=4, markersize=14)
    ax.set_xlabel(f"MFLOPs per image ({FLOPS_CONVENTION})")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Accuracy vs FLOPs (points: seeds; bars: mean ± std)")
    fig.tight_layout()
    return fig


def describe_complexity(complexity: pd.DataFrame, width_mult: float) -> str:
    """How much the widening costs and whether flop_counter agrees with the analytic count (`run.complexity_table`)."""
    mflops = complexity["MFLOPs"]
    return (f"Widened x{width_mult}: {mflops.iloc[1] / mflops.iloc[0]:.2f}x the baseline FLOPs; "
            f"flop_counter equals the analytic count for every network: "
            f"{bool((mflops == complexity['MFLOPs_analytic']).all())}.")


def describe_search(exp: Experiment) -> str:
    """Markdown: for each scoring mode and seed, whether the binary search reached the FLOPs target."""
    lines = [f"- {d['score']}, seed {d['seed']}: {d['message']} (threshold {d['threshold']:.4g})"
             for d in exp.details if d["network"] == "lw-dna"]
    return "Binary search on the global threshold (target FLOPs ratio " \
           f"{exp.config.ratio} of the widened net):\n" + "\n".join(lines)


def describe_verdict(acc: pd.DataFrame, cfg: Config) -> str:
    """Markdown: did the LW-DNA beat the regular baseline at lower FLOPs, per scoring mode (`run.versus_baseline`)?"""
    lines = []
    for v in versus_baseline(acc).itertuples():
        spread = "one seed: no spread estimate" if v.one_seed else \
            f"{'larger than' if abs(v.diff) > v.spread else 'within'} the seed spread {v.spread:.2f}"
        lines.append(f"- **{v.score}**: LW-DNA {v.acc_mean:.2f} ± {v.acc_std:.2f}% at {v.MFLOPs:.2f} MFLOPs vs "
                     f"baseline {v.base_acc_mean:.2f} ± {v.base_acc_std:.2f}% at {v.base_MFLOPs:.2f} MFLOPs: "
                     f"difference {v.diff:+.2f} points ({spread}); FLOPs {'lower' if v.fewer_flops else 'NOT lower'} "
                     f"-> hypothesis **{'held' if v.held else 'did not hold'}**.")
    return (f"On {cfg.dataset} with {cfg.model}-{cfg.depth} (x{cfg.width_mult}, ratio {cfg.ratio}, {cfg.epochs} "
            f"epochs, {len(cfg.seed_list)} seeds):\n" + "\n".join(lines))
