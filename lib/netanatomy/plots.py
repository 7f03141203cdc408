"""Shared figures (seaborn/matplotlib, labelled axes)."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns


def _label_cmap(n: int):
    colors = sns.color_palette("tab20", max(n, 1))
    return matplotlib.colors.ListedColormap([(1, 1, 1)] + [tuple(c) for c in colors][: max(n, 1)])


def image_masks_grid(images: np.ndarray, masks: Mapping[str, np.ndarray], titles: Sequence[str],
                     vocabulary: Mapping[str, Sequence[str]]):
    """Rows of samples: the RGB image then one label map per category (legend of the names present)."""
    cats = list(masks)
    n = len(images)
    fig, axes = plt.subplots(n, 1 + len(cats), figsize=(2.0 * (1 + len(cats)), 2.1 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i])
        axes[i, 0].set_title(titles[i], fontsize=9)
        for j, cat in enumerate(cats, start=1):
            m = masks[cat][i]
            names = vocabulary[cat]
            axes[i, j].imshow(m, cmap=_label_cmap(len(names) - 1), vmin=0, vmax=len(names) - 1, interpolation="nearest")
            present = [names[k] for k in np.unique(m) if k > 0]
            axes[i, j].set_title(f"{cat}: " + ", ".join(present[:3]) + ("…" if len(present) > 3 else ""), fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Concept world: images and their pixel-level concept masks")
    fig.tight_layout()
    return fig


def confusion_heatmap(cm: pd.DataFrame, title: str, ax=None):
    """Row-normalised confusion matrix as an annotated heatmap (rows true, columns predicted)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 5.5))
    sns.heatmap(cm, annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, ax=ax, cbar_kws={"label": "share of true class"},
                annot_kws={"fontsize": 7})
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return ax.figure
