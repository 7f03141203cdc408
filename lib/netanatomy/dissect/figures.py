"""Network Dissection's figures: detectors by layer and category, interpretability by depth
(`plot_depth`), IoU distributions, NetDissect's concept bar graph, the paper's cross-network figure
(`plot_published_figure`), unit galleries (top images with the mask above T_k), the HTML report,
and the findings prose (`describe`, `describe_depth`, `describe_published`)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .. import broden as brd
from ..report import html_page, png_data_uri
from ..runtime import atomic_write_text
from .method import tally_categories
from .run import LayerDissection
from .tables import detectors_per_category, safe_name, save_results, summary_table


#: The network names printed on the paper's cross-network figure, from NetDissect's
#: ``plot/getPrintName.m`` (its 'semantics' dictionary), keyed by the .mat's ``networks_name``.
PRINT_NAMES = {
    "caffenet_random": "AlexNet-random", "caffe_reference_imagenet": "AlexNet-ImageNet",
    "caffe_reference_places205": "AlexNet-Places205", "caffe_reference_imagenetplaces205": "AlexNet-Hybrid",
    "caffe_reference_places205_batchnorm": "AlexNet-Places205-BatchNorm",
    "caffe_reference_places365": "AlexNet-Places365", "caffe_reference_places365_GAP": "AlexNet-Places365-GAP",
    "vgg16_imagenet": "VGG-ImageNet", "vgg16_places365": "VGG-Places365", "vgg16_places205": "VGG-Places205",
    "vgg16_hybrid1365": "VGG-Hybrid", "googlenet_imagenet": "GoogLeNet-ImageNet",
    "googlenet_places205": "GoogLeNet-Places205", "googlenet_places365": "GoogLeNet-Places365",
    "resnet-152-torch-places365": "ResNet152-Places365", "resnet-152-torch-imagenet": "ResNet152-ImageNet",
    "ResNet-50-model_imagenet": "ResNet50-ImageNet", "weakly_deepcontext": "context", "weakly_audio": "audio",
    "weakly_videoorder": "frameorder", "weakly_videotracking": "tracking", "weakly_egomotion": "egomotion",
    "weakly_learningbymoving": "moving", "weakly_objectcentric": "objectcentric",
    "weakly_solvingpuzzle": "puzzle", "weakly_colorization": "colorization", "weakly_splitbrain": "crosschannel",
}
#: The figure's stacking order and colours (object at the bottom), as in the published picture.
FIGURE_CONCEPTS = ("object", "part", "scene", "material", "texture", "color")
FIGURE_COLORS = ("#352a87", "#0f5cdd", "#1ab0c2", "#78bf84", "#f4b14a", "#f9fb0e")


def plot_detectors(results, iou_threshold: float = 0.04, counting: str = "top_label", ax=None):
    """Bar plot: detectors per category for each layer (interpretability by depth) under `counting`."""
    df = detectors_per_category(results, iou_threshold, counting=counting)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.6))
    sns.barplot(data=df, x="category", y="detectors", hue="layer", ax=ax)
    layers = df["layer"].nunique()
    ax.legend(title="layer", fontsize=7, ncol=1 + layers // 15, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_xlabel("concept category" + (" (of the unit's top label)" if counting == "top_label"
                                        else " (the unit's best label within it)"))
    ax.set_ylabel(f"units with IoU >= {iou_threshold:g}")
    ax.set_title(f"Detectors per category by layer ({counting} counting)")
    ax.figure.tight_layout()
    return ax.figure


def plot_depth(results, iou_threshold: float = 0.04, counting: str = "paper"):
    """Interpretability by depth, layers in the given order: the share of units that are detectors
    (left) and the unique detectors per category, stacked (right), both under `counting`."""
    table = summary_table(results, iou_threshold, counting)
    uniq = detectors_per_category(results, iou_threshold, unique=True, counting=counting)
    wide = uniq.pivot_table(index="layer", columns="category", values="unique concepts", sort=False)
    wide = wide.loc[list(table["layer"])]
    x = np.arange(len(table))
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(9.0, 0.5 * len(x) + 5), 3.8))
    left.plot(x, table["detector share"], marker="o")
    left.set_ylim(0, 1)
    left.set_ylabel(f"share of units with IoU >= {iou_threshold:g}")
    left.set_title("Detectors by depth")
    bottom = np.zeros(len(x))
    for cat, color in zip(wide.columns, sns.color_palette("tab10", len(wide.columns))):
        right.bar(x, wide[cat].to_numpy(), bottom=bottom, color=color, label=cat)
        bottom += wide[cat].to_numpy()
    right.set_ylabel("unique detectors")
    right.set_title(f"Unique detectors per category by depth ({counting} counting)")
    right.legend(fontsize=8, title="category", bbox_to_anchor=(1.01, 1), loc="upper left")
    for ax in (left, right):
        ax.set_xticks(x)
        ax.set_xticklabels(table["layer"], rotation=60, ha="right", fontsize=8)
        ax.set_xlabel("layer (input to output)")
    fig.tight_layout()
    return fig


def plot_published_figure(figure: pd.DataFrame, ax=None):
    """The paper's cross-network figure from `published.read_published_figure`'s table: unique
    detectors per category stacked for every network, networks sorted by their total (descending,
    ties in file order, as NetDissect's ``plot/plot_semantics.m``)."""
    wide = figure.pivot_table(index="network", columns="concept", values="unique detectors", sort=False)
    cats = [c for c in FIGURE_CONCEPTS if c in wide.columns]
    wide = wide[cats]
    order = wide.sum(axis=1).sort_values(ascending=False, kind="stable").index
    wide = wide.loc[order]
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 4.4))
    bottom = np.zeros(len(wide))
    for cat, color in zip(cats, FIGURE_COLORS):
        ax.bar(np.arange(len(wide)), wide[cat].to_numpy(), bottom=bottom, color=color, edgecolor="k", lw=0.3,
               label=cat)
        bottom += wide[cat].to_numpy()
    ax.set_xticks(np.arange(len(wide)))
    ax.set_xticklabels([PRINT_NAMES.get(n, n) for n in wide.index], rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("network (last convolutional layer)")
    ax.set_ylabel("Number of unique detectors")
    ax.set_title("Unique detectors per category across networks (from semantics_cvpr_release.mat)")
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def plot_iou_distribution(results, iou_threshold: float = 0.04, ax=None):
    """Histogram of each unit's best IoU per layer, with the detector threshold."""
    df = pd.concat([(r.tally if isinstance(r, LayerDissection) else r)[["score"]].assign(layer=layer)
                    for layer, r in results.items()], ignore_index=True)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.6))
    sns.histplot(data=df, x="score", hue="layer", bins=30, element="step", stat="count", common_norm=False, ax=ax)
    ax.axvline(iou_threshold, color="k", ls="--", lw=1)
    ax.text(iou_threshold, ax.get_ylim()[1] * 0.95, f" IoU {iou_threshold:g}", va="top", fontsize=8)
    ax.set_xlabel("best IoU of the unit")
    ax.set_ylabel("units")
    ax.set_title("Distribution of unit IoU")
    return ax.figure


def plot_concept_bars(tally: pd.DataFrame, iou_threshold: float = 0.04, title: str = "", ax=None, layer: str = ""):
    """NetDissect's bar graph: detectors per concept, grouped by category, most frequent first."""
    det = tally[tally["score"] >= iou_threshold]
    counts = det.groupby(["category", "label"]).size().reset_index(name="units")
    cats = [c for c in tally_categories(tally) if c in set(counts["category"])] or sorted(set(counts["category"]))
    counts["cat_order"] = counts["category"].map({c: i for i, c in enumerate(cats)})
    counts = counts.sort_values(["cat_order", "units", "label"], ascending=[True, False, True])
    width = max(5.0, 0.28 * len(counts) + 1.5)
    if ax is None:
        _, ax = plt.subplots(figsize=(min(width, 24), 3.4))
    if len(counts):
        palette = dict(zip(cats, sns.color_palette("tab10", len(cats))))
        ax.bar(np.arange(len(counts)), counts["units"], color=[palette[c] for c in counts["category"]])
        ax.set_xticks(np.arange(len(counts)))
        ax.set_xticklabels(counts["label"], rotation=75, fontsize=8)
        handles = [plt.Rectangle((0, 0), 1, 1, color=palette[c]) for c in cats]
        ax.legend(handles, cats, fontsize=8, title="category", loc="upper right")
    ax.set_xlabel("concept")
    ax.set_ylabel("detector units")
    ax.set_title(title or (f"{layer}: " if layer else "")
                 + f"{len(det)}/{len(tally)} units covering {len(counts)} concepts with IoU >= {iou_threshold:g}")
    return ax.figure


# ----------------------------------------------------------------------------- unit images and report

def unit_strip(result: LayerDissection, unit: int, ds: brd.BrodenDataset, n: int | None = None,
               size: int | None = None) -> np.ndarray:
    """The unit's top images (0-based `unit`) side by side, darkened outside its thresholded mask.

    The activation map is upsampled bilinearly to the image size and thresholded at T_k, as in
    NetDissect's report; the region above threshold keeps full brightness with a yellow outline.
    """
    idx = result.top_images[unit][: (n or result.top_images.shape[1])]
    tiles = []
    for slot, i in enumerate(idx):
        img = ds.load_image(int(i)).astype(np.float32)
        h, w = img.shape[:2]
        if size is not None and (h, w) != (size, size):
            t = torch.from_numpy(img).permute(2, 0, 1)[None]
            img = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                                antialias=True)[0].permute(1, 2, 0).numpy()
            h, w = size, size
        amap = torch.from_numpy(result.top_maps[unit, slot]).float()[None, None]
        up = F.interpolate(amap, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
        mask = up > result.thresholds[unit]
        out = img * np.where(mask, 1.0, 0.25)[..., None]
        edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
        out[edge] = (255, 220, 0)
        tiles.append(np.clip(out, 0, 255).astype(np.uint8))
        tiles.append(np.full((h, 2, 3), 255, np.uint8))
    return np.concatenate(tiles[:-1], axis=1) if tiles else np.zeros((8, 8, 3), np.uint8)


def plot_gallery(result: LayerDissection, broden_root: str | Path, units: int = 8, n_images: int = 10):
    """Figure with the top-scoring units of a layer: label, IoU and their top images with masks."""
    ds = brd.BrodenDataset(broden_root, result.categories)
    rows = result.tally.head(units)
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.35 * len(rows) + 0.4), squeeze=False)
    for ax, (_, r) in zip(axes[:, 0], rows.iterrows()):
        ax.imshow(unit_strip(result, int(r["unit"]) - 1, ds, n_images))
        ax.set_axis_off()
        ax.set_title(f"{result.layer} unit {int(r['unit'])}: {r['label']} ({r['category']}), IoU {r['score']:.3f}",
                     fontsize=9, loc="left")
    fig.suptitle(f"{result.layer}: top units and their top images (masks above T_k)", fontsize=10)
    fig.tight_layout()
    return fig


REPORT_CSS = (".hdr{font-size:1.3em;font-weight:600}.unit{margin:6px 0}"
              ".unit img{image-rendering:pixelated;height:72px}")


def _layer_section(layer: str, res: LayerDissection, out_dir: Path, broden_root, max_units: int | None,
                   n_images: int | None, progress: bool) -> str:
    """One layer's part of the report: header, concept bar graph, links, and every unit's strip (saved as PNG)."""
    ds = brd.BrodenDataset(broden_root, res.categories)
    s, thr = res.summary(), res.iou_threshold
    head = f"{s['interpretable']}/{s['units']} units covering {s['unique_concepts']} concepts with IoU &ge; {thr:g}"
    fig = plot_concept_bars(res.tally, thr, title=f"{layer}: detectors per concept")
    bars = png_data_uri(fig)
    plt.close(fig)
    folder = safe_name(layer)
    (out_dir / folder / "units").mkdir(parents=True, exist_ok=True)
    items = []
    rows = res.tally if max_units is None else res.tally.head(max_units)
    for _, r in tqdm(list(rows.iterrows()), desc=f"report {layer}", disable=not progress, leave=False):
        unit = int(r["unit"])
        rel = f"{folder}/units/unit_{unit:04d}.png"
        Image.fromarray(unit_strip(res, unit - 1, ds, n_images)).save(out_dir / rel)
        cls = "ok" if r["score"] >= thr else ""
        items.append(f"<div class='unit'><div class='{cls}'><b>unit {unit}</b> {html.escape(str(r['label']))} "
                     f"({html.escape(str(r['category']))}) IoU {r['score']:.3f}</div>"
                     f"<img src='{html.escape(rel)}' loading='lazy'></div>")
    return (f"<h2>{html.escape(layer)}</h2><p class='hdr'>{head}</p><img src='{bars}' style='max-width:100%'>"
            f"<p>tally: <a href='{folder}/tally.csv'>{folder}/tally.csv</a>, thresholds: "
            f"<a href='{folder}/thresholds.csv'>{folder}/thresholds.csv</a></p>" + "".join(items))


def write_report(results: Mapping[str, LayerDissection], out_dir: str | Path, broden_root: str | Path,
                 title: str = "Network Dissection", max_units: int | None = None, n_images: int | None = None,
                 progress: bool = True) -> Path:
    """Write the HTML report (and each layer's tally.csv, thresholds.csv, unit image strips).

    Per layer: the header "N/M units covering K concepts with IoU >= t", the bar graph of
    detectors per concept grouped by category, then every unit (sorted by score, at most
    `max_units`) with its label, category, IoU and top images with the thresholded mask.
    Returns the path of ``<out_dir>/dissection.html``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_results(results, out_dir)
    parts = [_layer_section(layer, res, out_dir, broden_root, max_units, n_images, progress)
             for layer, res in results.items()]
    body = (f"<p>Data: <code>{html.escape(str(broden_root))}</code>. Each unit: its best label, category and "
            f"IoU, and its top images by maximum activation with the region above its threshold T_k (others "
            f"darkened).</p>{''.join(parts)}")
    return atomic_write_text(out_dir / "dissection.html", html_page(title, body, REPORT_CSS))


def describe(results: Mapping[str, LayerDissection], coverage: pd.DataFrame, counting: str = "top_label") -> str:
    """Markdown stating the detectors per layer and how many of the data set's concepts got a
    detector (`coverage` from `tables.planted_coverage` under the same `counting`)."""
    parts = []
    for layer, res in results.items():
        s, t = res.summary(counting), res.summary("top_label" if counting == "paper" else "paper")
        parts.append(f"`{layer}`: {s['interpretable']}/{s['units']} units are detectors "
                     f"(IoU >= {res.iou_threshold:g}) with {s['unique_concepts']} unique detectors by the "
                     f"{counting} counting ({t['unique_concepts']} by the {t['counting']} counting)")
    total, hit = int(coverage["concepts"].sum()), int(coverage["with detector"].sum())
    per = ", ".join(f"{r['category']} {r['with detector']}/{r['concepts']}" for _, r in coverage.iterrows())
    return ("; ".join(parts) + f". Over all dissected layers, {hit} of the {total} concepts present in the data "
            f"set have at least one detector unit ({per}; {counting} counting).")


def describe_depth(results: Mapping[str, LayerDissection], counting: str = "paper") -> str:
    """Markdown stating, from the first to the last dissected layer (in the given order), the share of
    units that are detectors and the unique detectors of each category present, under `counting`."""
    first, last = next(iter(results)), list(results)[-1]
    a, b = results[first].summary(counting), results[last].summary(counting)
    per = ", ".join(f"{c} {a['unique_per_category'][c]} -> {b['unique_per_category'][c]}"
                    for c in a["unique_per_category"] if a["unique_per_category"][c] or b["unique_per_category"][c])
    return (f"From `{first}` to `{last}` ({len(results)} layers): detectors {a['interpretable']}/{a['units']} "
            f"({a['interpretable'] / max(1, a['units']):.2f}) -> {b['interpretable']}/{b['units']} "
            f"({b['interpretable'] / max(1, b['units']):.2f}); unique detectors {a['unique_concepts']} -> "
            f"{b['unique_concepts']} ({per + '; ' if per else ''}{counting} counting). One model on one image sample: no verdict "
            f"is drawn from these counts.")


def describe_published(published) -> str:
    """Markdown comparing the CSVs' counts with the .mat (`published.Published`), or its notes."""
    table = published.comparison()
    if table is None or "unique detectors (.mat)" not in table:
        return " ".join(published.notes)
    same = ((table["detectors (paper, CSV)"] == table["detectors (.mat)"])
            & (table["unique detectors (paper, CSV)"] == table["unique detectors (.mat)"]))
    nets = table["network"].nunique()
    alex = table[(table["network"] == "caffe_reference_places205") & (table["concept"] == "all")]
    line = (f"Counted the paper's way, the published per-unit tallies of {nets} networks reproduce "
            f"{int(same.sum())} of {len(table)} (network, concept) entries of `semantics_cvpr_release.mat` exactly")
    if len(alex):
        r = alex.iloc[0]
        line += (f"; AlexNet/Places205 conv5 has {int(r['unique detectors (paper, CSV)'])} unique detectors by the "
                 f"paper's counting and {int(r['unique detectors (top_label, CSV)'])} by top label "
                 f"({int(r['detectors (paper, CSV)'])} of 256 units are detectors)")
    return line + "."
