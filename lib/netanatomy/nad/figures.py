"""NAD figures: path heatmaps, loss curves, path size versus beta, activation maps, hit-rate curves,
the similarity clustermap, the class explorer, and the `describe_*` sentences of the findings."""

from __future__ import annotations

from typing import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..report import png_data_uri
from .method import QUADRANTS, PathResult


# ============================================================================ nad_findpath
def plot_keep_heatmap(result: PathResult, title: str | None = None):
    """Kept-channel fraction per layer (columns) and class (rows)."""
    kf = result.keep_fraction()
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(kf.columns), 1.0 + 0.35 * len(kf)))
    sns.heatmap(kf, annot=len(kf) <= 20, fmt=".2f", cmap="viridis", vmin=0, vmax=1, ax=ax,
                cbar_kws={"label": "fraction of channels kept"}, annot_kws={"fontsize": 7})
    ax.set_xlabel("gated layer")
    ax.set_ylabel("class")
    ax.set_title(title or f"NAD paths: kept channels per layer (beta={result.meta['config']['beta']})")
    fig.tight_layout()
    return fig


def plot_loss_curves(result: PathResult):
    """Per-epoch mean losses (total, CE, MSE, regulariser) for each class."""
    h = result.history.melt(id_vars=["epoch", "class_name"], value_vars=["loss", "ce", "mse", "reg"],
                            var_name="term", value_name="value")
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2), sharex=True)
    names = {"loss": "total loss", "ce": "cross-entropy (gated)", "mse": "sum of layer MSEs",
             "reg": "mean sigmoid(logit)^2"}
    for ax, term in zip(axes, names):
        sns.lineplot(data=h[h["term"] == term], x="epoch", y="value", hue="class_name", ax=ax,
                     legend=term == "reg", marker="o", markersize=3)
        ax.set_title(names[term])
        ax.set_xlabel("epoch")
        ax.set_ylabel(term)
    if axes[-1].get_legend() is not None:
        axes[-1].legend(title="class", fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle("NAD path search: loss curves per class (mean over the epoch's steps)")
    fig.tight_layout()
    return fig


def plot_beta_sweep(sweep: pd.DataFrame):
    """Kept-channel fraction versus beta, per layer and over all layers."""
    fig, ax = plt.subplots(figsize=(7, 4))
    layers = sweep[sweep["layer"] != "all layers"]
    sns.lineplot(data=layers, x="beta", y="kept_fraction", hue="layer", marker="o", ax=ax, alpha=0.6)
    allx = sweep[sweep["layer"] == "all layers"]
    ax.plot(allx["beta"], allx["kept_fraction"], color="black", lw=2.5, marker="s", label="all layers")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("beta (weight of the path-size regulariser)")
    ax.set_ylabel("fraction of channels kept")
    ax.set_ylim(0, 1)
    ax.set_title("Path size versus beta")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def describe_paths(model: str, beta: float, result: PathResult, summary: pd.DataFrame) -> str:
    """The paths' size and the search time, in one sentence."""
    kept = summary["kept fraction"]
    return (f"**{model}, beta={beta}:** the paths keep {kept.mean():.1%} of the {int(summary['of'].iloc[0])} gated "
            f"channels on average (per class from {kept.min():.1%} to {kept.max():.1%}); search took "
            f"{result.meta['seconds']:.0f} s ({len(result.classes)} classes in one batched pass).")


def describe_sweep(sweep: pd.DataFrame, classes: Sequence[int]) -> str:
    """The overall kept fraction for each beta of the sweep."""
    overall = sweep[sweep["layer"] == "all layers"].set_index("beta")["kept_fraction"]
    return ("**Path size versus beta** (classes " + ", ".join(str(c) for c in classes) + "): " +
            ", ".join(f"beta={b:g}: {v:.1%} kept" for b, v in overall.items()) + ".")


# ============================================================================ nad_hitrate
def plot_hit_curves(summary: pd.DataFrame, chance: float = 0.25):
    """Hit rate per gated layer (mean with its 95 % interval over mosaics), one panel per model."""
    models = list(dict.fromkeys(summary["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.8), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        sub = summary[summary["model"] == model]
        for paths, grp in sub.groupby("paths", sort=False):
            grp = grp.sort_values("layer_index")
            c = "tab:blue" if paths == "learned" else "tab:gray"
            ax.plot(grp["layer_index"], grp["mean"], marker="o", color=c, label=f"{paths} paths")
            ax.fill_between(grp["layer_index"], grp["ci low"], grp["ci high"], color=c, alpha=0.25)
        ax.axhline(chance, color="red", ls="--", lw=1, label=f"chance ({chance})")
        ax.set_xticks(sorted(sub["layer_index"].unique()))
        ax.set_xlabel("gated layer (1 = shallowest)")
        ax.set_ylabel("2x2 hit rate")
        ax.set_ylim(0, 1)
        ax.set_title(model)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Share of the top activation pixels inside the quadrant of the path's class "
                 "(mean and 95 % interval over mosaics)")
    fig.tight_layout()
    return fig


def _no_ticks(axes) -> None:
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])


def _overlay(ax, img: np.ndarray, cam, selection, title: str, fontsize: int) -> None:
    """The image dimmed, the map over it, and the selected pixels outlined in cyan."""
    ax.imshow(img * 0.35)
    ax.imshow(cam.numpy(), cmap="magma", alpha=0.45, vmin=0, vmax=1)
    ax.contour(selection.numpy() > 0, levels=[0.5], colors="cyan", linewidths=0.8)
    ax.set_title(title, fontsize=fontsize)


def plot_single_maps(maps: dict, class_name: str, layers: Sequence[str]):
    """cam_1x1: the image, then per layer the top pixels with the class path (top row) and the original net (bottom)."""
    n = len(layers)
    fig, axes = plt.subplots(2, n + 1, figsize=(1.9 * (n + 1), 4.1), squeeze=False)
    img = maps["image"].permute(1, 2, 0).numpy()
    for row, key in enumerate(("path", "original")):
        axes[row, 0].imshow(img)
        axes[row, 0].set_title(("class path" if key == "path" else "original net"), fontsize=9)
        for j, layer in enumerate(layers, start=1):
            _overlay(axes[row, j], img, maps[f"{key}_cam"][layer], maps[key][layer], layer, 7)
    _no_ticks(axes)
    fig.suptitle(f"Activation maps of one '{class_name}' image (cyan: top {maps['mask_rate']:.0%} pixels)")
    fig.tight_layout()
    return fig


def plot_mosaic_maps(example: dict):
    """One mosaic (`run.mosaic_example`) with each quadrant class's map and top pixels at one layer."""
    img = example["image"].permute(1, 2, 0).numpy()
    fig, axes = plt.subplots(1, 5, figsize=(12, 2.8))
    axes[0].imshow(img)
    axes[0].set_title("mosaic", fontsize=9)
    for q in range(4):
        _overlay(axes[q + 1], img, example["cams"][q], example["selection"][q],
                 f"{example['classes'][q]} ({QUADRANTS[q]}): hit {example['hits'][q]:.2f}", 8)
    _no_ticks(axes)
    fig.suptitle(f"{example['model']}, layer {example['layer']}: each quadrant class's path "
                 f"(cyan: top {example['mask_rate']:.0%} pixels)")
    fig.tight_layout()
    return fig


def _verdict_text(row) -> str:
    return f"{row['mean']:.3f} [{row['ci low']:.3f}, {row['ci high']:.3f}] over {row['n']} {row['unit']}: **{row['verdict']}**"


def describe_hits(verdicts: pd.DataFrame, n_deep: int) -> str:
    """The verdicts of nad_hitrate (`run.hit_verdicts`), per model, in one paragraph."""
    parts = []
    for model, grp in verdicts.groupby("model", sort=False):
        claims = "; ".join(f"{row['claim']}: {_verdict_text(row)}" for _, row in grp.iterrows())
        parts.append(f"{model}: {claims}")
    return (f"**2x2 hit rate of the {n_deep} deepest gated layers, 95 % intervals** (mosaics: new images for "
            f"these paths; search seeds: the search itself): " + " | ".join(parts) + ".")


# ============================================================================ nad_subarch
def plot_similarity(sim: pd.DataFrame):
    """Clustered heatmap of the layer-averaged IoU of the classes' paths (`run.similarity_frame`)."""
    g = sns.clustermap(sim, cmap="mako", vmin=0, vmax=1, annot=len(sim) <= 16, fmt=".2f", figsize=(7.5, 7),
                       annot_kws={"fontsize": 7}, cbar_kws={"label": "mean IoU over layers"}, method="average")
    g.ax_heatmap.set_xlabel("class")
    g.ax_heatmap.set_ylabel("class")
    g.fig.suptitle("Sub-architecture similarity (IoU of binary paths, averaged over layers; clustered)", y=1.02)
    return g.fig


def describe_agreement(agree: pd.DataFrame, k: int = 3) -> str:
    """Our agreement score (`run.agreement_table`) against random paths and chance, with its verdicts."""
    first = agree.iloc[0]
    lines = [f"**Agreement score (ours):** the class each class is most often mistaken for is among its {k} most "
             f"similar sub-architectures for {first['learned paths']:.0%} of the classes (random paths "
             f"{first['random paths']:.0%}, chance {first['chance']:.0%})."]
    for _, row in agree.iterrows():
        lines.append(f"{row['score']}, learned minus random (paired): {_verdict_text(row)}.")
    return " ".join(lines)


def _path_picture(result: PathResult, row: int, name: str) -> str:
    """A class's binary path (layers x channels, green = kept) as an HTML image."""
    hard = result.hard()
    fig, ax = plt.subplots(figsize=(8, 0.4 + 0.3 * len(result.layers)))
    grid = np.full((len(result.layers), max(v.shape[1] for v in hard.values())), np.nan)
    for i, n in enumerate(result.layers):
        grid[i, :hard[n].shape[1]] = hard[n][row].float().numpy()
    ax.imshow(grid, aspect="auto", cmap="Greens", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(result.layers)), result.layers, fontsize=7)
    ax.set_xlabel("channel")
    ax.set_ylabel("gated layer")
    ax.set_title(f"path of '{name}' (green: kept channel)")
    uri = png_data_uri(fig)
    plt.close(fig)
    return f"<img src='{uri}'>"


def explorer(result: PathResult, table: pd.DataFrame):
    """An ipywidgets explorer: pick a class, see its path (kept channels per layer) and its row of
    `table` (`run.explorer_table`, the static form shown when run headless)."""
    names = list(table.index)
    pick = widgets.Dropdown(options=names, description="class")
    view = widgets.HTML()

    def show(change=None):
        row = names.index(pick.value)
        view.value = _path_picture(result, row, pick.value) + table.loc[[pick.value]].to_html()

    pick.observe(show, names="value")
    show()
    return widgets.VBox([pick, view])
