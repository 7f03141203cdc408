"""The DKA notebook's figures, pages and findings: training curves, concentration, detectors and K
sweep plots, per-image explanation pages like upstream ``explain.html``, each trunk's dissection
report, and the `describe_*` sentences of the findings."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..data import raw_image
from ..dissect.figures import write_report
from ..report import html_page, png_data_uri
from . import method
from .run import DENSE, DKA, Concentration, Config, Pair, explained_images


# ============================================================================ plots
def plot_training(pairs: Sequence[Pair]):
    """Training accuracy per epoch of both arms, one line per seed."""
    frames = [t.history.assign(model=DENSE if t.k is None else DKA, seed=p.seed)
              for p in pairs for t in p.both if "train_acc" in t.history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if frames:
        sns.lineplot(data=pd.concat(frames, ignore_index=True), x="epoch", y="train_acc", hue="model",
                     units="seed", estimator=None, marker="o", alpha=0.7, ax=ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training accuracy (augmented images)")
    ax.set_title(f"Dense versus DKA head: {len(pairs)} seed(s), each arm from the same initialisation")
    fig.tight_layout()
    return fig


def plot_seeds(table: pd.DataFrame, verdicts: pd.DataFrame):
    """Per measure, both arms of every seed joined by a line (paired), with the verdict in the title."""
    measures = list(verdicts["measure"])
    fig, axes = plt.subplots(1, len(measures), figsize=(4 * len(measures), 3.6))
    names = {"val_acc": "validation accuracy", "interpretable": "interpretable units",
             "concentration": "top-K share of the explanation"}
    for ax, (_, v) in zip(np.atleast_1d(axes), verdicts.iterrows()):
        wide = table.pivot(index="seed", columns="model", values=v["measure"])[[DENSE, DKA]]
        for _, row in wide.iterrows():
            ax.plot([0, 1], row.to_numpy(dtype=float), "-o", color="grey", alpha=0.6)
        ax.set_xticks([0, 1], [DENSE, DKA])
        ax.set_xlim(-0.3, 1.3)
        ax.set_xlabel("head (lines join the arms of one seed)")
        ax.set_ylabel(names.get(v["measure"], v["measure"]))
        span = "" if np.isnan(v["low"]) else f" [{v['low']:+.3g}, {v['high']:+.3g}]"
        ax.set_title(f"{v['verdict']}: DKA - dense {v['difference']:+.3g}{span}", fontsize=9)
    fig.suptitle("Paired by training seed: DKA minus dense decides each claim")
    fig.tight_layout()
    return fig


def plot_concentration(conc: Concentration, k: int):
    """Left: mean share of the explanation carried by the top-n units; right: per-image top-K share."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    sns.lineplot(data=conc.curves, x="units", y="share", hue="model", marker="o", ax=axes[0])
    axes[0].axvline(k, color="grey", ls=":", lw=1)
    axes[0].set_xlabel("top-n units by contribution to the true class")
    axes[0].set_ylabel("mean share of sum |contributions|")
    axes[0].set_title("Cumulative explanation share")
    sns.histplot(data=conc.per_image, x="share", hue="model", bins=30, stat="density", common_norm=False,
                 element="step", ax=axes[1])
    axes[1].set_xlabel(f"share carried by the top-{k} units (per validation image)")
    axes[1].set_ylabel("density")
    axes[1].set_title(f"Explanation concentration (K = {k})")
    fig.tight_layout()
    return fig


def plot_detectors(frame: pd.DataFrame, title: str):
    """Detectors per category, one bar per model."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if len(frame):
        sns.barplot(data=frame, x="category", y="detectors", hue="model", ax=ax)
    ax.set_xlabel("concept category (best label of the unit)")
    ax.set_ylabel("units with IoU >= threshold")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_sweep(sweep: pd.DataFrame, D: int):
    """Validation accuracy against interpretable units, one point per K (K = D is the dense head)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ok = sweep[sweep["status"] == "ok"]
    sc = ax.scatter(ok["interpretable"], ok["val_acc"], c=np.log2(ok["k"].astype(float)), cmap="viridis", s=60)
    for _, r in ok.iterrows():
        ax.annotate(f"K={'D' if r['k'] == D else int(r['k'])}", (r["interpretable"], r["val_acc"]),
                    textcoords="offset points", xytext=(5, 4), fontsize=9)
    if len(ok):
        fig.colorbar(sc, ax=ax, label="log2 K")
    ax.set_xlabel("interpretable units (IoU >= threshold)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"K sweep: accuracy versus interpretability (D = {D})")
    fig.tight_layout()
    return fig


def write_dissection_reports(dissections: dict, out_dir: Path, broden_root: Path, max_units: int | None = 40,
                             progress: bool = True) -> pd.DataFrame:
    """Each trunk's Network Dissection HTML report (`dissect.figures.write_report`) under out_dir/dissection_<model>/."""
    rows = []
    for label, res in dissections.items():
        slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
        path = write_report({f"{label}: {res.layer}": res}, Path(out_dir) / f"dissection_{slug}", broden_root,
                            title=f"Network Dissection: {label}", max_units=max_units, progress=progress)
        rows.append({"model": label, "report": str(path)})
    return pd.DataFrame(rows)


# ============================================================================ per-image explanations
def _overlay(image: np.ndarray, amap: np.ndarray, strength: float) -> np.ndarray:
    """Upstream-style class-activation overlay: jet map of the unit (min-max scaled), blended by strength."""
    h, w = image.shape[:2]
    t = torch.from_numpy(amap.astype(np.float32))[None, None]
    up = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    up = (up - up.min()) / max(float(up.max() - up.min()), 1e-8)
    jet = matplotlib.colormaps["jet"](up)[..., :3] * 255
    out = 0.5 * image.astype(np.float32) + 0.45 * max(strength, 0.0) * jet
    return np.clip(out, 0, 255).astype(np.uint8)


def _unit_entry(unit: int, share: float, contribution: float, labels: pd.DataFrame | None, overlay: np.ndarray) -> dict:
    lab = labels.loc[unit] if labels is not None and unit in labels.index else None
    return {"unit": unit + 1, "share": share, "contribution": contribution,
            "label": None if lab is None else str(lab["concept"]),
            "category": None if lab is None else str(lab["category"]),
            "iou": None if lab is None else float(lab["iou"]), "overlay": png_data_uri(overlay)}


def explain(model: nn.Module, layer: str, dataset, indices: Sequence[int], labels: pd.DataFrame | None = None,
            top: int = 5, device: str = "auto", upscale: int = 96) -> list[dict]:
    """The upstream demo: per image, the `top` units by contribution to the true class, each with its
    share of the explanation (contribution / sum |contributions|, in %), dissection label and IoU
    (`labels`: `LayerDissection.unit_labels()` indexed by unit), and a class-activation overlay of
    its map (as a PNG data URI)."""
    res = method.unit_contributions(model, layer, dataset, device=device, progress=False, indices=indices,
                                    keep_maps=True)
    classes = list(getattr(dataset, "classes", []))
    out = []
    for j, i in enumerate(indices):
        c = res["contrib"][j]
        share = c / c.abs().sum().clamp_min(1e-12) * 100
        units = c.argsort(descending=True)[:top].tolist()
        img = raw_image(dataset, i)
        if img.shape[0] < upscale:
            img = np.asarray(Image.fromarray(img).resize((upscale, upscale), Image.NEAREST))
        scale = float(share[units].max()) or 1.0
        entries = [_unit_entry(u, float(share[u]), float(c[u]), labels,
                               _overlay(img, res["maps"][j, u].numpy(), float(share[u]) / scale)) for u in units]
        t, p = int(res["target"][j]), int(res["pred"][j])
        out.append({"index": int(i), "target": classes[t] if classes else t, "predicted": classes[p] if classes else p,
                    "logit": float(res["logit"][j]), "top_share": float(share[units].sum()),
                    "image": png_data_uri(img), "units": entries})
    return out


def explanations(cfg: Config, pair: Pair, dissections: dict) -> dict[str, list[dict]]:
    """Per-image explanations of the seeded validation images (`run.explained_images`), for both models."""
    idx = explained_images(cfg, pair.data)
    return {t.label: explain(t.model, cfg.layer, pair.data.val, idx,
                             dissections[t.label].unit_labels().set_index("unit"), top=5, device=cfg.device)
            for t in pair.both}


_EXPLAIN_CSS = (".img{display:inline-block;margin:6px;padding:6px;box-shadow:0 3px 8px #aaa}"
                ".cell{display:inline-block;width:110px;vertical-align:top;font-size:12px;text-align:center}"
                ".cell img{width:104px;image-rendering:pixelated}")


def explain_page(explanations: list[dict], title: str, iou_threshold: float = 0.04) -> str:
    """An HTML page like upstream explain.html: per image '100% = a% + b% + ...', the units, their
    labels (IoU) and overlays. Labels below `iou_threshold` are greyed."""
    parts = ["<p>Contribution of unit i to the true class = mean-pooled f<sub>i</sub> &times; "
             "W[target, i]; shares are contributions / sum |contributions| (as upstream demo.py). "
             "Overlays: the unit's map, jet colour scale, strength proportional to its share.</p>"]
    for e in explanations:
        ok = "ok" if e["target"] == e["predicted"] else "fail"
        head = " + ".join(f"{u['share']:.1f}%" for u in e["units"])
        cells = [f"<div class='cell'><img src='{e['image']}'><br>image val-{e['index']}<br>"
                 f"true <b>{html.escape(str(e['target']))}</b><br>"
                 f"<span class='{ok}'>pred {html.escape(str(e['predicted']))}</span></div>"]
        for u in e["units"]:
            low = u["iou"] is None or u["iou"] < iou_threshold
            lab = "(no dissection)" if u["label"] is None else f"{html.escape(u['label'])} ({u['iou']:.2f})"
            cells.append(f"<div class='cell'><img src='{u['overlay']}'><br>unit {u['unit']}: {u['share']:.1f}%"
                         f"<br><span class='{'low' if low else ''}'>{lab}</span></div>")
        parts.append(f"<div class='img'><div><b>100% &asymp; {head}"
                     f" + rest</b> (top units carry {e['top_share']:.1f}%)</div>{''.join(cells)}</div>")
    return html_page(title, "".join(parts), css=_EXPLAIN_CSS)


# ============================================================================ findings
def describe_verdicts(verdicts: pd.DataFrame, k: int) -> str:
    """Each claim with both arms' means, the paired 95 % interval of DKA - dense and its verdict."""
    def fmt(v, measure):
        return f"{100 * v:.1f}" if measure == "val_acc" else f"{v:.2f}"
    parts = []
    for _, v in verdicts.iterrows():
        unit = " points" if v["measure"] == "val_acc" else ""
        span = "" if np.isnan(v["low"]) else f", 95 % interval [{fmt(v['low'], v['measure'])}, " \
                                              f"{fmt(v['high'], v['measure'])}]{unit}"
        parts.append(f"*{v['claim'].replace('margin', fmt(abs(v['threshold']), 'val_acc') + ' points')}*: dense "
                     f"{fmt(v['dense'], v['measure'])}, DKA K={k} {fmt(v['dka'], v['measure'])}, difference "
                     f"{fmt(v['difference'], v['measure'])}{unit}{span} over {v['seeds']} seed(s): **{v['verdict']}**.")
    return " ".join(parts)


def describe_dissection(dissections: dict, layer: str, iou_threshold: float) -> str:
    """Interpretable units and unique concepts of both trunks, and the published numbers as context."""
    p = method.PUBLISHED
    ours = " ; ".join(f"{name}: **{s['interpretable']}/{s['units']}** units of `{layer}` interpretable, "
                      f"**{s['unique_concepts']}** unique concepts"
                      for name, s in ((name, d.summary()) for name, d in dissections.items()))
    return (ours + f" (IoU >= {iou_threshold}). Released DKA ResNet-18 (Places365, Broden; upstream "
            f"pretrained/tally.csv, context only): "
            f"{p['interpretable']}/{p['units']} interpretable, {p['unique_concepts']} unique concepts, "
            f"{p['scene_detectors']} scene detectors.")


def describe_concentration(conc: Concentration, k: int) -> str:
    """Mean share of the explanation carried by the top-K units, dense then DKA."""
    c = conc.table.set_index("model")["mean_share"]
    return (f"Explanation concentration (share of sum |contributions| to the true class carried by the top-{k} "
            f"units, mean over validation images): dense **{c.iloc[0]:.2f}**, DKA **{c.iloc[1]:.2f}**.")


def describe_sweep(sweep: pd.DataFrame, D: int) -> str:
    """Accuracy and interpretable units per K of the sweep (a failed run by its status)."""
    return "K sweep (" + ", ".join(f"K={'D' if r.k == D else r.k}: acc {r.val_acc:.3f}, "
                                   f"{r.interpretable:.0f} interpretable" if r.status == "ok" else
                                   f"K={r.k}: {r.status}" for r in sweep.itertuples()) + ")"
