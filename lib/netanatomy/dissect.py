"""Network Dissection (Bau et al., CVPR 2017): unit-by-concept IoU on a Broden-format data set.

The method, as the paper and its code (NetDissect, NetDissect-Lite):

1. Run the model over the data set with a hook on each probed layer (several layers in one pass).
2. Per unit k, the threshold T_k is the ``1 - quantile`` (0.995) quantile of its activations over
   all spatial positions of all images, at feature-map resolution.
3. Each activation map is upsampled bilinearly to the segmentation size and binarised, M_k = A_k > T_k.
4. Over the data set: I[k, c] = |M_k & L_c|, G[c] = |L_c| (a whole-image label counts every
   pixel) and the category-restricted activation A_cat[k, cat]. ``union_rule="image"`` (original
   NetDissect) counts mask pixels only in images that hold a label of the category;
   ``union_rule="lite"`` (NetDissect-Lite, used by its published tallies) counts an image's mask
   for a category when the mask overlaps a pixel label of the category or the image has a
   whole-image label of it.
5. IoU[k, c] = I / (A_cat[k, cat(c)] + G[c] - I); per unit the best label per category and
   overall; a unit is a detector when its best IoU >= `iou_threshold` (0.04).

Unlike NetDissect-Lite, which stores every activation on disk as float64 and loops over units in
Python per image, this module streams: a first pass computes the thresholds (exact, see
`DissectConfig.quantile_method`) and each unit's top images, a second pass tallies masks against
one-hot labels as batched matrix products (`tally_batch`), on CPU or GPU. Both passes are cached
(keyed by the model's weights, the layers, the data and the configuration) and checkpoint
periodically, so an interrupted run resumes. Memory is bounded by the batch size and the
per-unit quantile buffer, never by the data-set size.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import io
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import broden as brd
from .errors import DataError, ParamError
from .hooks import get_module, run, trace
from .runtime import (atomic_save, atomic_write_csv, atomic_write_text, cache_dir, cache_key, pick_device,
                      weights_fingerprint)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
UNION_RULES = ("image", "lite")
QUANTILE_METHODS = ("auto", "exact", "sample")
#: Label written in tally.csv for a category in which a unit has no overlap at all (IoU 0).
NO_LABEL = "-"


# ----------------------------------------------------------------------------- configuration

@dataclasses.dataclass
class DissectConfig:
    """Parameters of a dissection (defaults: the paper's and the original code's).

    quantile: top share of activations above the threshold (0.005 -> the 0.995 quantile).
    iou_threshold: a unit is a detector of its best label when IoU >= this (0.04).
    categories: Broden categories to use (None: all of the data set).
    union_rule: 'image' (original NetDissect) or 'lite' (NetDissect-Lite), see the module doc.
    normalize: 'auto' (the concept world's mean/std for an exported world, else ImageNet's),
        'world', 'imagenet', 'none' or a pair (mean, std) of RGB triples on the 0-1 scale.
    quantile_method: 'exact' keeps, per unit, the top ``quantile * N * H * W + 1`` activations
        (numpy's linear-interpolation quantile, exactly); 'sample' keeps the top of a seeded
        Bernoulli sample of spatial positions sized so that at most `max_buffer` values per
        unit are held (rank error about 1/sqrt(quantile * sampled) relative: with the default
        16384, the share above T_k is 0.005 +- 0.8% of itself, one standard deviation);
        'auto' is exact when the exact buffer fits `max_buffer`, else 'sample'.
    top_images: images per unit shown in the report (by per-image maximum activation).
    tally_chunk: most elements (images x units x segmentation pixels) of one upsampled mask
        block in the tally; bounds the tally's memory.
    checkpoint_every: batches between checkpoints of a pass (resume after interruption).
    """

    quantile: float = 0.005
    iou_threshold: float = 0.04
    categories: Sequence[str] | None = None
    union_rule: str = "image"
    batch_size: int = 64
    device: str = "auto"
    progress: bool = True
    normalize: str | tuple = "auto"
    quantile_method: str = "auto"
    max_buffer: int = 16384
    top_images: int = 10
    num_workers: int = 0
    split: str | None = None
    seed: int = 0
    tally_chunk: int = 1 << 25
    checkpoint_every: int = 200
    cache: bool = True

    def __post_init__(self):
        if not (isinstance(self.quantile, (int, float)) and 0 < self.quantile < 1):
            raise ParamError("quantile", f"must lie in (0, 1), got {self.quantile!r} (the paper uses 0.005)")
        if not (isinstance(self.iou_threshold, (int, float)) and 0 <= self.iou_threshold <= 1):
            raise ParamError("iou_threshold", f"must lie in [0, 1], got {self.iou_threshold!r}")
        if self.union_rule not in UNION_RULES:
            raise ParamError("union_rule", f"{self.union_rule!r} is not one of {', '.join(UNION_RULES)}")
        if self.quantile_method not in QUANTILE_METHODS:
            raise ParamError("quantile_method", f"{self.quantile_method!r} is not one of {', '.join(QUANTILE_METHODS)}")
        for name in ("batch_size", "max_buffer", "top_images", "tally_chunk", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ParamError(name, f"must be a positive integer, got {value!r}")
        if isinstance(self.categories, str):
            self.categories = [self.categories]
        if self.categories is not None:
            self.categories = list(self.categories)
            if not self.categories:
                raise ParamError("categories", "an empty list; give None for all categories")
        _normalization(self.normalize, None)  # validates


def _normalization(spec, root) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if isinstance(spec, str):
        if spec == "auto":
            spec = "world" if root is not None and brd.is_world_export(root) else "imagenet"
        if spec == "world":
            from .world import MEAN, STD
            return tuple(MEAN), tuple(STD)
        if spec == "imagenet":
            return IMAGENET_MEAN, IMAGENET_STD
        if spec == "none":
            return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        raise ParamError("normalize", f"{spec!r} is not 'auto', 'world', 'imagenet', 'none' or (mean, std)")
    try:
        mean, std = spec
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise ParamError("normalize", f"{spec!r} is not 'auto', 'world', 'imagenet', 'none' or (mean, std)") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ParamError("normalize", "mean and std must be RGB triples with positive std")
    return mean, std


# ----------------------------------------------------------------------------- results

@dataclasses.dataclass
class LayerDissection:
    """The dissection of one layer.

    tally: DataFrame in NetDissect-Lite's tally.csv format (see `make_tally`); iou (units, labels);
    thresholds (units,); labels: DataFrame (number, name, category) of the iou columns;
    intersection (units, labels), activation (units, categories) = A_cat, truth (labels,) = G;
    top_images (units, n) data-set indices by per-image max activation and top_maps (units, n, h, w)
    their activation maps at feature resolution (for the report's overlays).
    """

    layer: str
    tally: pd.DataFrame
    iou: np.ndarray
    thresholds: np.ndarray
    labels: pd.DataFrame
    categories: list[str]
    intersection: np.ndarray
    activation: np.ndarray
    truth: np.ndarray
    top_images: np.ndarray
    top_maps: np.ndarray
    iou_threshold: float = 0.04

    @property
    def units(self) -> int:
        return len(self.thresholds)

    def summary(self) -> dict:
        """units, interpretable (detectors), unique_concepts, per_category {cat: detectors}, unique_per_category."""
        return tally_summary(self.tally, self.iou_threshold, self.categories)


def tally_summary(tally: pd.DataFrame, iou_threshold: float = 0.04, categories: Sequence[str] | None = None) -> dict:
    """Summary of a tally (ours or a published one): detectors, unique concepts, detectors per category."""
    det = tally[tally["score"] >= iou_threshold]
    cats = list(categories) if categories is not None else tally_categories(tally)
    return {
        "units": int(len(tally)),
        "interpretable": int(len(det)),
        "unique_concepts": int(det[["category", "label"]].drop_duplicates().shape[0]),
        "per_category": {c: int((det["category"] == c).sum()) for c in cats},
        "unique_per_category": {c: int(det.loc[det["category"] == c, "label"].nunique()) for c in cats},
    }


def tally_categories(tally: pd.DataFrame) -> list[str]:
    """Category names of a tally's per-category column groups, in column order."""
    return [c[:-len("-label")] for c in tally.columns if c.endswith("-label")]


# ----------------------------------------------------------------------------- helpers

def data_hash(root: Path) -> str:
    """A sha1 over index.csv, label.csv, category.csv and the export marker of a Broden folder."""
    h = hashlib.sha1()
    for name in ("index.csv", "label.csv", "category.csv", brd.MARKER):
        path = root / name
        if path.is_file():
            h.update(name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:20]


class _Images(torch.utils.data.Dataset):
    """Images of a Broden set only (the first pass does not need segmentations)."""

    def __init__(self, ds: brd.BrodenDataset, indices: Sequence[int]):
        self.ds, self.indices = ds, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        i = self.indices[j]
        return self.ds.load_image(i), i


def _collate_images(items):
    images, idx = zip(*items)
    shapes = {im.shape for im in images}
    imgs = torch.from_numpy(np.stack(images)) if len(shapes) == 1 else [torch.from_numpy(im) for im in images]
    return imgs, torch.tensor(idx)


class _Subset(torch.utils.data.Dataset):
    def __init__(self, ds, indices):
        self.ds, self.indices = ds, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        return self.ds[self.indices[j]]


def _loader(ds, cfg: DissectConfig, collate_fn):
    return torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers,
                                       collate_fn=collate_fn)


def _prepare(images, input_size: int, mean: torch.Tensor, std: torch.Tensor, device) -> torch.Tensor:
    """uint8 (B, H, W, 3) images (or a list of them) -> normalised float (B, 3, s, s) on `device`."""
    ims = images if isinstance(images, list) else [images]
    out = []
    for im in ims:
        x = im.to(device)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        x = x.permute(0, 3, 1, 2).float().div_(255)
        if tuple(x.shape[-2:]) != (input_size, input_size):
            x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
        out.append(x)
    x = torch.cat(out)
    return (x - mean) / std


def _forward(model, layers, x) -> dict[str, torch.Tensor]:
    with torch.no_grad(), trace(model, layers, stop=True, detach=True) as t:
        run(model, x)
    acts = {}
    for name in layers:
        a = t.outputs[name]
        if not isinstance(a, torch.Tensor) or a.dim() != 4:
            shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ParamError("layers", f"layer {name!r} outputs {shape}; dissection needs a (N, C, H, W) "
                                       f"convolutional feature map")
        acts[name] = a.float()
    return acts


def quantile_positions(n: int, quantile: float) -> tuple[int, float, int]:
    """For numpy's linear quantile at 1 - quantile over n values: (rank from the top of the lower
    neighbour, interpolation weight, values to keep from the top)."""
    pos = (1.0 - quantile) * (n - 1)
    lo = int(math.floor(pos))
    frac = pos - lo
    keep = n - lo  # the ascending positions lo and lo + 1 are the descending ranks n-1-lo and n-2-lo
    return n - 1 - lo, frac, keep


def _threshold_from_top(top: torch.Tensor, n: int, quantile: float) -> torch.Tensor:
    """Thresholds from per-unit descending top buffers (units, k) of n values per unit."""
    rank_lo, frac, keep = quantile_positions(n, quantile)
    k = top.shape[1]
    lo_val = top[:, min(rank_lo, k - 1)]
    hi_val = top[:, max(min(rank_lo - 1, k - 1), 0)] if rank_lo >= 1 else lo_val
    return lo_val + frac * (hi_val - lo_val)


# ----------------------------------------------------------------------------- pass 1: thresholds

class _TopBuffer:
    """Per-unit descending top-k of a stream of (units, m) values, merged with torch.topk."""

    def __init__(self, units: int, k: int, device):
        self.k = k
        self.values = torch.empty(units, 0, device=device)

    def add(self, vals: torch.Tensor) -> None:
        merged = torch.cat([self.values, vals], dim=1)
        k = min(self.k, merged.shape[1])
        self.values = torch.topk(merged, k, dim=1, sorted=True).values


class _LayerPass1:
    def __init__(self, units: int, hw: tuple[int, int], n_images: int, cfg: DissectConfig, device, layer_seed: int):
        self.units, self.hw, self.n_images = units, hw, n_images
        n_total = n_images * hw[0] * hw[1]
        _, _, keep = quantile_positions(n_total, cfg.quantile)
        method = cfg.quantile_method
        if method == "auto":
            method = "exact" if keep <= cfg.max_buffer else "sample"
        self.method = method
        if method == "exact":
            self.rate = 1.0
            k = keep
        else:
            # Bernoulli sampling rate so that the kept top (with a 25% + 64 margin) fits max_buffer
            self.rate = min(1.0, cfg.max_buffer / (1.25 * cfg.quantile * n_total + 64))
            k = cfg.max_buffer
        self.buffer = _TopBuffer(units, k, device)
        self.sampled = 0
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.seed * 1_000_003 + layer_seed)
        self.top_n = min(cfg.top_images, n_images)
        self.top_val = torch.empty(units, 0, device=device)
        self.top_idx = torch.empty(units, 0, dtype=torch.long, device=device)

    def add(self, acts: torch.Tensor, idx: torch.Tensor) -> None:
        b = acts.shape[0]
        flat = acts.permute(1, 0, 2, 3).reshape(self.units, -1)
        if self.rate < 1.0:
            keep = torch.rand(flat.shape[1], generator=self.gen) < self.rate
            flat = flat[:, keep.to(flat.device)]
        self.sampled += flat.shape[1]
        self.buffer.add(flat)
        # running top images by per-image max activation (ties: lower index first)
        per_image = acts.amax(dim=(2, 3)).t()  # (units, b)
        vals = torch.cat([self.top_val, per_image], 1)
        ids = torch.cat([self.top_idx, idx.to(acts.device).expand(self.units, b)], 1)
        order = torch.argsort(ids, dim=1, stable=True)
        vals, ids = vals.gather(1, order), ids.gather(1, order)
        k = min(self.top_n, vals.shape[1])
        sel = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :k]
        self.top_val, self.top_idx = vals.gather(1, sel), ids.gather(1, sel)

    def state(self) -> dict:
        return {"values": self.buffer.values.cpu(), "sampled": self.sampled, "gen": self.gen.get_state(),
                "top_val": self.top_val.cpu(), "top_idx": self.top_idx.cpu()}

    def load(self, state: dict, device) -> None:
        self.buffer.values = state["values"].to(device)
        self.sampled = state["sampled"]
        self.gen.set_state(state["gen"])
        self.top_val, self.top_idx = state["top_val"].to(device), state["top_idx"].to(device)

    def result(self, quantile: float) -> dict:
        thr = _threshold_from_top(self.buffer.values, self.sampled, quantile)
        return {"thresholds": thr.cpu(), "top_idx": self.top_idx.cpu(), "top_val": self.top_val.cpu(),
                "method": self.method, "rate": self.rate, "sampled": self.sampled, "hw": self.hw}


# ----------------------------------------------------------------------------- pass 2: the tally

def tally_batch(acts: torch.Tensor, thresholds: torch.Tensor, seg: torch.Tensor, scalars: torch.Tensor,
                labelcat: torch.Tensor, union_rule: str = "image", chunk: int = 1 << 25):
    """Tally one batch with batched matrix products.

    acts (B, U, h, w) activations; thresholds (U,); seg (B, L, sh, sw) label indices (0 = none,
    1..C); scalars (B, W) whole-image label indices (0 = padding); labelcat (C + 1, K) one-hot
    of each label index's category (row 0 zero). Returns float64 (I (U, C), A_cat (U, K), G (C,),
    per-image mask sizes (B, U)). The mask is ``upsample_bilinear(acts) > threshold``.

    Per chunk of images: each image's labels are compacted to its own P columns (padded to the
    largest count in the chunk) and one-hot encoded per pixel, (b, P + 1, S) with row 0 all ones
    (it yields the mask size); each image's *active* units (feature-map maximum above threshold;
    the others have empty masks) are gathered and padded to the largest count A, upsampled and
    thresholded in place into a float mask (b, S, A); one ``torch.bmm`` gives every active unit's
    overlap with every label of its image, which an ``index_add_`` adds into I[unit, label].
    """
    b_all, units = acts.shape[:2]
    sh, sw = seg.shape[-2:]
    s = sh * sw
    n_labels = labelcat.shape[0] - 1
    n_cats = labelcat.shape[1]
    dev = acts.device
    inter = torch.zeros(units * n_labels, dtype=torch.float64, device=dev)
    act_cat = torch.zeros(units, n_cats, dtype=torch.float64, device=dev)
    truth = torch.zeros(n_labels, dtype=torch.float64, device=dev)
    sizes = torch.zeros(b_all, units, dtype=torch.float64, device=dev)
    thr = thresholds.to(device=dev, dtype=acts.dtype)
    labelcat = labelcat.to(dev).double()
    active_all = acts.amax(dim=(2, 3)) > thr  # (B, U): units whose mask can be non-empty
    # images per chunk so that the largest mask block (b, S, A) stays within `chunk` elements
    a_max = max(1, int(active_all.sum(1).max()))
    step = max(1, chunk // max(1, a_max * s))
    for start in range(0, b_all, step):
        a = acts[start:start + step]
        b, _, h, w = a.shape
        sg = seg[start:start + step].to(dev).reshape(b, -1, s)
        sc = scalars[start:start + step].to(dev)
        rows = torch.arange(b, device=dev).unsqueeze(1)
        # the labels each image holds, compacted per image to columns 1..P (padding: absent labels)
        held = torch.zeros(b, n_labels + 1, dtype=torch.bool, device=dev)
        held[rows, sg.reshape(b, -1)] = True
        held[rows, sc] = True
        held[:, 0] = False
        n_held = held.sum(1)
        p = max(1, int(n_held.max()))
        lab = torch.argsort((~held).to(torch.uint8), dim=1, stable=True)[:, :p]  # (b, P) label indices
        lab_ok = torch.arange(p, device=dev).unsqueeze(0) < n_held.unsqueeze(1)
        col = torch.zeros(b, n_labels + 1, dtype=torch.long, device=dev)
        col.scatter_(1, lab, torch.where(lab_ok, torch.arange(1, p + 1, device=dev).expand(b, p), 0))
        col[:, 0] = 0
        onehot = torch.zeros(b, p + 1, s, device=dev)  # (b, P + 1, S): the image's labels x pixels
        ones = torch.ones(b, 1, s, device=dev)
        for layer in range(sg.shape[1]):
            onehot.scatter_add_(1, col.gather(1, sg[:, layer]).unsqueeze(1), ones)
        onehot[:, 0, :] = 1.0  # row 0 counts every pixel: the mask size
        scal = torch.zeros(b, p + 1, device=dev)
        scal.scatter_add_(1, col.gather(1, sc), torch.ones_like(sc, dtype=torch.float32))
        scal = scal[:, 1:].double()  # (b, P): whole-image labels
        pix = onehot[:, 1:, :].sum(2).double()  # (b, P): pixels of each label
        # active units of each image first (stable: unit order kept), padded to the largest count
        active = active_all[start:start + b]
        count = active.sum(1)
        n_act = int(count.max()) if b else 0
        overlap = torch.zeros(b, units, p + 1, dtype=torch.float64, device=dev)
        if n_act:
            order = torch.argsort((~active).to(torch.uint8), dim=1, stable=True)[:, :n_act]  # (b, A)
            valid = torch.arange(n_act, device=dev).unsqueeze(0) < count.unsqueeze(1)
            # channels-last maps: bilinear upsampling vectorises over units (several times faster on
            # CPU) and the result, viewed as (b, S, A), feeds the product without a copy
            maps = a.gather(1, order[:, :, None, None].expand(b, n_act, h, w)) \
                .contiguous(memory_format=torch.channels_last)
            up = F.interpolate(maps, size=(sh, sw), mode="bilinear", align_corners=False) \
                if (h, w) != (sh, sw) else maps.clone(memory_format=torch.channels_last)
            up = up.permute(0, 2, 3, 1).reshape(b, s, n_act)
            slot_thr = torch.where(valid, thr[order], torch.full_like(thr[order], float("inf")))
            up.gt_(slot_thr.unsqueeze(1))  # in place: 1.0 above threshold, else 0.0 (padding: never)
            part = torch.bmm(onehot, up).transpose(1, 2).double()  # (b, A, P + 1)
            del up, maps
            overlap.scatter_(1, order.unsqueeze(2).expand(b, n_act, p + 1), part)
        size = overlap[:, :, 0].clone()  # (b, U)
        ov = overlap[:, :, 1:] + size.unsqueeze(2) * scal.unsqueeze(1)  # (b, U, P) with whole-image labels
        flat = torch.arange(units, device=dev).view(1, units, 1) * n_labels + (lab - 1).clamp(min=0).unsqueeze(1)
        inter.index_add_(0, flat.reshape(-1), (ov * lab_ok.unsqueeze(1)).reshape(-1))
        truth.index_add_(0, (lab - 1).clamp(min=0).reshape(-1), ((pix + s * scal) * lab_ok).reshape(-1))
        cat_of = labelcat[lab] * lab_ok.unsqueeze(2)  # (b, P, K)
        if union_rule == "image":
            has_cat = torch.bmm(((pix + scal) > 0).double().unsqueeze(1), cat_of)[:, 0] > 0  # (b, K)
            act_cat += size.t() @ has_cat.double()
        else:
            hit = torch.bmm(ov, cat_of) > 0  # (b, U, K): the mask overlaps a label of the category
            act_cat += (size.unsqueeze(2) * hit.double()).sum(0)
        sizes[start:start + b] = size
    return inter.view(units, n_labels), act_cat, truth, sizes


def iou_from_counts(inter: np.ndarray, act_cat: np.ndarray, truth: np.ndarray, label_cat: np.ndarray) -> np.ndarray:
    """IoU[k, c] = I / (A_cat[k, cat(c)] + G[c] - I), 0 where the union is empty."""
    union = act_cat[:, label_cat] + truth[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    return iou


def make_tally(iou: np.ndarray, inter: np.ndarray, act_cat: np.ndarray, truth: np.ndarray,
               labels: pd.DataFrame, categories: Sequence[str]) -> pd.DataFrame:
    """NetDissect-Lite's tally.csv as a DataFrame.

    Columns ``unit, category, label, score`` then per category ``cat-label, cat-truth,
    cat-activation, cat-intersect, cat-iou``; units 1-based; rows sorted by score (descending,
    ties by unit). A category in which a unit has no overlap with any label (best IoU 0) gets
    label ``'-'``, truth 0, intersect 0, iou 0 and its activation A_cat; a unit with IoU 0
    everywhere gets category and label ``'-'`` and score 0.
    """
    units = iou.shape[0]
    cats = list(categories)
    label_cat = labels["category"].map({c: i for i, c in enumerate(cats)}).to_numpy()
    names = labels["name"].to_numpy()
    cols: dict[str, object] = {"unit": np.arange(1, units + 1)}
    best_score = np.zeros(units)
    best_cat = np.full(units, NO_LABEL, dtype=object)
    best_label = np.full(units, NO_LABEL, dtype=object)
    per_cat = {}
    for k, cat in enumerate(cats):
        idx = np.flatnonzero(label_cat == k)
        if len(idx):
            sub = iou[:, idx]
            j = idx[np.argmax(sub, axis=1)]  # first maximum: lowest label number among ties
            val = iou[np.arange(units), j]
        else:
            j = np.zeros(units, int)
            val = np.zeros(units)
        ok = val > 0
        per_cat[f"{cat}-label"] = np.where(ok, names[j] if len(idx) else NO_LABEL, NO_LABEL)
        per_cat[f"{cat}-truth"] = np.where(ok, truth[j] if len(idx) else 0, 0).astype(np.int64)
        per_cat[f"{cat}-activation"] = act_cat[:, k].astype(np.int64)
        per_cat[f"{cat}-intersect"] = np.where(ok, inter[np.arange(units), j] if len(idx) else 0, 0).astype(np.int64)
        per_cat[f"{cat}-iou"] = np.where(ok, val, 0.0)
        better = val > best_score
        best_score = np.where(better, val, best_score)
        best_cat = np.where(better, cat, best_cat)
        best_label = np.where(better, per_cat[f"{cat}-label"], best_label)
    cols.update({"category": best_cat, "label": best_label, "score": best_score})
    cols.update(per_cat)
    df = pd.DataFrame(cols)
    return df.sort_values(["score", "unit"], ascending=[False, True], kind="stable").reset_index(drop=True)


TALLY_BASE = ("unit", "category", "label", "score")


def read_tally(path: str | Path) -> pd.DataFrame:
    """Load a tally.csv (ours or a published NetDissect / NetDissect-Lite one) as a DataFrame.

    Checks the columns ``unit, category, label, score`` and the per-category groups; empty
    labels become '-', numbers become numbers; rows are sorted by score as in tally.csv.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "tally file not found", expected="a tally.csv written by NetDissect(-Lite) or dissect")
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[])
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot be read as CSV ({str(exc).splitlines()[0][:200]})") from exc
    missing = [c for c in TALLY_BASE if c not in df.columns]
    if missing:
        raise DataError(path, f"lacks column(s) {', '.join(missing)}",
                        expected="columns unit,category,label,score,<cat>-label,<cat>-truth,...")
    for c in df.columns:
        if c == "score" or c.endswith(("-truth", "-activation", "-intersect", "-iou")):
            values = pd.to_numeric(df[c].replace("", np.nan), errors="coerce")
            if values.isna().any() and c == "score":
                row = int(np.flatnonzero(values.isna())[0]) + 2
                raise DataError(path, f"row {row}: score {df[c].iloc[row - 2]!r} is not a number")
            df[c] = values.fillna(0.0)
        elif c in ("category", "label") or c.endswith("-label"):
            df[c] = df[c].astype(str).replace("", NO_LABEL)
    df["unit"] = pd.to_numeric(df["unit"], errors="coerce")
    if df["unit"].isna().any():
        raise DataError(path, "column 'unit' holds non-integers")
    df["unit"] = df["unit"].astype(int)
    return df.sort_values(["score", "unit"], ascending=[False, True], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- the method

def _model_input_size(ds: brd.BrodenDataset, input_size: int | None) -> int:
    if input_size is None:
        sizes = {(r.ih, r.iw) for r in ds.rows[:2000]}
        if len(sizes) != 1 or len({*next(iter(sizes))}) != 1:
            raise ParamError("input_size", f"the images of {ds.root} have sizes {sorted(sizes)[:4]}; give input_size")
        return next(iter(sizes))[0]
    if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)) or not 8 <= input_size <= 4096:
        raise ParamError("input_size", f"must be an integer number of pixels (8..4096), got {input_size!r}")
    return int(input_size)


def _checkpointed(path: Path, cfg: DissectConfig):
    if cfg.cache and path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - a damaged cache file is recomputed
            path.unlink(missing_ok=True)
    return None


def dissect(model: nn.Module, layers: Sequence[str] | str, broden_root: str | Path, cfg: DissectConfig | None = None,
            input_size: int | None = None) -> dict[str, LayerDissection]:
    """Dissect `layers` of `model` on the Broden set at `broden_root`; one LayerDissection per layer.

    Images are resized to `input_size` (default: their own size) and normalised by
    `cfg.normalize`. Two passes over the data, both cached under ``cache_dir("dissect")`` keyed
    by the model's weights, the layers, the data and the configuration, with periodic checkpoints.
    """
    cfg = cfg or DissectConfig()
    if isinstance(layers, str):
        layers = [layers]
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise ParamError("layers", "no layers given")
    for name in layers:
        get_module(model, name)  # clear error listing valid names
    if broden_root is None:
        raise ParamError("broden_root", "no Broden folder given")
    ds = brd.open_broden(broden_root, cfg.categories, cfg.split)
    root = ds.root
    size = _model_input_size(ds, input_size)
    mean_t, std_t = _normalization(cfg.normalize, root)
    device = pick_device(cfg.device)
    mean = torch.tensor(mean_t, device=device).view(1, 3, 1, 1)
    std = torch.tensor(std_t, device=device).view(1, 3, 1, 1)
    was_training = model.training
    model.eval()
    first_device = next(iter(model.parameters()), torch.empty(0)).device
    model.to(device)
    try:
        key1 = cache_key(weights=weights_fingerprint(model), layers=layers, data=data_hash(root), split=cfg.split,
                         n=len(ds), quantile=cfg.quantile, method=cfg.quantile_method, max_buffer=cfg.max_buffer,
                         top=cfg.top_images, seed=cfg.seed, size=size, mean=mean_t, std=std_t)
        pass1 = _pass1(model, layers, ds, cfg, size, mean, std, device, key1)
        key2 = cache_key(pass1=key1, categories=ds.category_names, union_rule=cfg.union_rule)
        pass2 = _pass2(model, layers, ds, cfg, size, mean, std, device, pass1, key2)
    finally:
        model.to(first_device)
        model.train(was_training)
    labels = ds.labels[["number", "name", "category"]].reset_index(drop=True)
    label_cat = labels["category"].map({c: i for i, c in enumerate(ds.category_names)}).to_numpy()
    results = {}
    for name in layers:
        p2 = pass2[name]
        inter, act_cat, truth = p2["inter"], p2["act_cat"], p2["truth"]
        iou = iou_from_counts(inter, act_cat, truth, label_cat)
        tally = make_tally(iou, inter, act_cat, truth, labels, ds.category_names)
        results[name] = LayerDissection(
            layer=name, tally=tally, iou=iou, thresholds=pass1[name]["thresholds"].numpy().astype(np.float64),
            labels=labels, categories=list(ds.category_names), intersection=inter, activation=act_cat,
            truth=truth, top_images=pass1[name]["top_idx"].numpy(), top_maps=p2["top_maps"],
            iou_threshold=float(cfg.iou_threshold))
    return results


def _pass1(model, layers, ds, cfg, size, mean, std, device, key) -> dict:
    folder = cache_dir("dissect")
    final = folder / f"pass1-{key}.pt"
    done = _checkpointed(final, cfg)
    if done is not None:
        return done
    part = folder / f"pass1-{key}.partial.pt"
    n = len(ds)
    state = _checkpointed(part, cfg)
    start = state["done"] if state else 0
    stats: dict[str, _LayerPass1] = {}
    if state:
        for j, name in enumerate(layers):
            units, hw = state["shapes"][name]
            stats[name] = _LayerPass1(units, hw, n, cfg, device, j)
            stats[name].load(state["layers"][name], device)
    loader = _loader(_Images(ds, range(start, n)), cfg, _collate_images)
    bar = tqdm(loader, desc="dissect: thresholds", disable=not cfg.progress, leave=False)
    done_images = start
    for batch, (images, idx) in enumerate(bar, start=1):
        acts = _forward(model, layers, _prepare(images, size, mean, std, device))
        for j, name in enumerate(layers):
            a = acts[name]
            if name not in stats:
                stats[name] = _LayerPass1(a.shape[1], tuple(a.shape[-2:]), n, cfg, device, j)
            stats[name].add(a, idx)
        done_images += len(idx)
        if cfg.cache and batch % cfg.checkpoint_every == 0 and done_images < n:
            atomic_save({"done": done_images, "shapes": {k: (v.units, v.hw) for k, v in stats.items()},
                         "layers": {k: v.state() for k, v in stats.items()}}, part)
    result = {name: stats[name].result(cfg.quantile) for name in layers}
    if cfg.cache:
        atomic_save(result, final)
        part.unlink(missing_ok=True)
    return result


def _pass2(model, layers, ds, cfg, size, mean, std, device, pass1, key) -> dict:
    folder = cache_dir("dissect")
    final = folder / f"pass2-{key}.pt"
    done = _checkpointed(final, cfg)
    if done is not None:
        return done
    part = folder / f"pass2-{key}.partial.pt"
    n = len(ds)
    labelcat = torch.from_numpy(ds.labelcat).to(device)
    state = _checkpointed(part, cfg)
    start = state["done"] if state else 0
    acc = {}
    for name in layers:
        units = len(pass1[name]["thresholds"])
        top_idx = pass1[name]["top_idx"]
        h, w = pass1[name]["hw"]
        if state:
            acc[name] = {k: (v.to(device) if isinstance(v, torch.Tensor) and k != "top_maps" else v)
                         for k, v in state["layers"][name].items()}
        else:
            acc[name] = {"inter": torch.zeros(units, ds.num_labels, dtype=torch.float64, device=device),
                         "act_cat": torch.zeros(units, len(ds.category_names), dtype=torch.float64, device=device),
                         "truth": torch.zeros(ds.num_labels, dtype=torch.float64, device=device),
                         "top_maps": torch.zeros(units, top_idx.shape[1], h, w)}
    needed = {}
    for name in layers:
        top_idx = pass1[name]["top_idx"]
        for u, slot in zip(*np.nonzero(top_idx.numpy() >= 0)):
            needed.setdefault(int(top_idx[u, slot]), []).append((name, int(u), int(slot)))
    loader = _loader(_Subset(ds, range(start, n)), cfg, brd.collate)
    bar = tqdm(loader, desc="dissect: tally", disable=not cfg.progress, leave=False)
    done_images = start
    for batch, (images, seg, scal, idx) in enumerate(bar, start=1):
        acts = _forward(model, layers, _prepare(images, size, mean, std, device))
        for name in layers:
            inter, act_cat, truth, _ = tally_batch(acts[name], pass1[name]["thresholds"].to(device), seg, scal,
                                                   labelcat, cfg.union_rule, cfg.tally_chunk)
            a = acc[name]
            a["inter"] += inter
            a["act_cat"] += act_cat
            a["truth"] += truth
        for b, i in enumerate(idx.tolist()):
            for name, u, slot in needed.get(i, ()):
                acc[name]["top_maps"][u, slot] = acts[name][b, u].cpu()
        done_images += len(idx)
        if cfg.cache and batch % cfg.checkpoint_every == 0 and done_images < n:
            atomic_save({"done": done_images, "layers": {k: {kk: vv.cpu() for kk, vv in v.items()}
                                                         for k, v in acc.items()}}, part)
    # truth (G) is the same for every layer; it was accumulated per layer for simplicity
    result = {name: {"inter": acc[name]["inter"].cpu().numpy(), "act_cat": acc[name]["act_cat"].cpu().numpy(),
                     "truth": acc[name]["truth"].cpu().numpy(), "top_maps": acc[name]["top_maps"].numpy()}
              for name in layers}
    if cfg.cache:
        atomic_save(result, final)
        part.unlink(missing_ok=True)
    return result


# ----------------------------------------------------------------------------- tables and plots

def summary_table(results: Mapping[str, LayerDissection | pd.DataFrame], iou_threshold: float = 0.04) -> pd.DataFrame:
    """One row per layer: units, detectors, share, unique concepts, detectors per category."""
    rows = []
    for layer, res in results.items():
        s = res.summary() if isinstance(res, LayerDissection) else tally_summary(res, iou_threshold)
        row = {"layer": layer, "units": s["units"], "detectors": s["interpretable"],
               "detector share": round(s["interpretable"] / max(1, s["units"]), 3),
               "unique concepts": s["unique_concepts"]}
        row.update({f"{c} detectors": n for c, n in s["per_category"].items()})
        rows.append(row)
    return pd.DataFrame(rows)


def detectors_per_category(results: Mapping[str, LayerDissection | pd.DataFrame], iou_threshold: float = 0.04,
                           unique: bool = False) -> pd.DataFrame:
    """Long table (layer, category, detectors or unique concepts) for the per-layer plot."""
    rows = []
    for layer, res in results.items():
        s = res.summary() if isinstance(res, LayerDissection) else tally_summary(res, iou_threshold)
        per = s["unique_per_category"] if unique else s["per_category"]
        rows += [{"layer": layer, "category": c, "detectors" if not unique else "unique concepts": n}
                 for c, n in per.items()]
    return pd.DataFrame(rows)


def planted_coverage(results: Mapping[str, LayerDissection], broden_root: str | Path | None = None,
                     iou_threshold: float | None = None) -> pd.DataFrame:
    """Per category: concepts of the data set (labels present), and how many have a detector in any layer.

    For the concept world these are the world's planted concepts.
    """
    any_res = next(iter(results.values()))
    thr = any_res.iou_threshold if iou_threshold is None else iou_threshold
    found: dict[str, set] = {}
    for res in results.values():
        det = res.tally[res.tally["score"] >= thr]
        for cat, lab in zip(det["category"], det["label"]):
            found.setdefault(cat, set()).add(lab)
    rows = []
    labels = any_res.labels.assign(truth=any_res.truth)
    for cat in any_res.categories:
        present = labels[(labels["category"] == cat) & (labels["truth"] > 0)]
        hit = sorted(found.get(cat, set()))
        rows.append({"category": cat, "concepts": len(present), "with detector": len(hit),
                     "detected": ", ".join(hit)})
    return pd.DataFrame(rows)


def plot_detectors(results, iou_threshold: float = 0.04, ax=None):
    """Bar plot: detectors per category for each layer (interpretability by depth)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = detectors_per_category(results, iou_threshold)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.6))
    sns.barplot(data=df, x="category", y="detectors", hue="layer", ax=ax)
    ax.set_xlabel("concept category (of the unit's best label)")
    ax.set_ylabel(f"units with IoU >= {iou_threshold:g}")
    ax.set_title("Detectors per category by layer")
    return ax.figure


def plot_iou_distribution(results, iou_threshold: float = 0.04, ax=None):
    """Histogram of each unit's best IoU per layer, with the detector threshold."""
    import matplotlib.pyplot as plt
    import seaborn as sns

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
    import matplotlib.pyplot as plt
    import seaborn as sns

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


def plot_gallery(result: LayerDissection, broden_root: str | Path, units: int = 8, n_images: int = 10,
                 iou_threshold: float | None = None):
    """Figure with the top-scoring units of a layer: label, IoU and their top images with masks."""
    import matplotlib.pyplot as plt

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


def _png_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def save_results(results: Mapping[str, LayerDissection], out_dir: str | Path) -> dict[str, Path]:
    """Write ``<out_dir>/<layer>/tally.csv`` and ``thresholds.csv`` per layer; return the tally paths."""
    out_dir = Path(out_dir)
    paths = {}
    for layer, res in results.items():
        folder = out_dir / _safe(layer)
        paths[layer] = atomic_write_csv(res.tally, folder / "tally.csv")
        atomic_write_csv(pd.DataFrame({"unit": np.arange(1, res.units + 1), "threshold": res.thresholds}),
                         folder / "thresholds.csv")
    return paths


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def write_report(results: Mapping[str, LayerDissection], out_dir: str | Path, broden_root: str | Path,
                 title: str = "Network Dissection", max_units: int | None = None, n_images: int | None = None,
                 progress: bool = True) -> Path:
    """Write the HTML report (and each layer's tally.csv, thresholds.csv, unit image strips).

    Per layer: the header "N/M units covering K concepts with IoU >= t", the bar graph of
    detectors per concept grouped by category, then every unit (sorted by score, at most
    `max_units`) with its label, category, IoU and top images with the thresholded mask.
    Returns the path of ``<out_dir>/dissection.html``.
    """
    from PIL import Image
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_results(results, out_dir)
    parts = []
    for layer, res in results.items():
        ds = brd.BrodenDataset(broden_root, res.categories)
        s = res.summary()
        thr = res.iou_threshold
        head = f"{s['interpretable']}/{s['units']} units covering {s['unique_concepts']} concepts with IoU &ge; {thr:g}"
        fig = plot_concept_bars(res.tally, thr, title=f"{layer}: detectors per concept")
        bars = _png_b64(fig)
        plt.close(fig)
        folder = _safe(layer)
        (out_dir / folder / "units").mkdir(parents=True, exist_ok=True)
        items = []
        rows = res.tally if max_units is None else res.tally.head(max_units)
        for _, r in tqdm(list(rows.iterrows()), desc=f"report {layer}", disable=not progress, leave=False):
            unit = int(r["unit"])
            strip = unit_strip(res, unit - 1, ds, n_images)
            rel = f"{folder}/units/unit_{unit:04d}.png"
            Image.fromarray(strip).save(out_dir / rel)
            cls = "ok" if r["score"] >= thr else ""
            items.append(f"<div class='unit'><div class='{cls}'><b>unit {unit}</b> {html.escape(str(r['label']))} "
                         f"({html.escape(str(r['category']))}) IoU {r['score']:.3f}</div>"
                         f"<img src='{html.escape(rel)}' loading='lazy'></div>")
        parts.append(f"<h2>{html.escape(layer)}</h2><p class='hdr'>{head}</p>"
                     f"<img src='data:image/png;base64,{bars}' style='max-width:100%'>"
                     f"<p>tally: <a href='{folder}/tally.csv'>{folder}/tally.csv</a>, thresholds: "
                     f"<a href='{folder}/thresholds.csv'>{folder}/thresholds.csv</a></p>" + "".join(items))
    style = ("<style>body{font-family:system-ui,sans-serif;margin:2em}.hdr{font-size:1.3em;font-weight:600}"
             ".unit{margin:6px 0}.unit img{image-rendering:pixelated;height:72px}.ok{color:#070}</style>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{style}</head>"
            f"<body><h1>{html.escape(title)}</h1><p>Data: <code>{html.escape(str(broden_root))}</code>. Each unit: "
            f"its best label, category and IoU, and its top images by maximum activation with the region above "
            f"its threshold T_k (others darkened).</p>{''.join(parts)}</body></html>")
    return atomic_write_text(out_dir / "dissection.html", page)


# ----------------------------------------------------------------------------- notebook helpers

def subject_model(model: str = "small_vgg", weights: str | Path | None = None, num_classes: int | None = None,
                  scale: str = "default", device: str = "auto", progress: bool = True) -> nn.Module:
    """The network to dissect: the zoo's trained concept-world net (no `weights`), or
    ``models.build(model, num_classes, weights=weights)`` (e.g. a Places365 ResNet-18 with 365 classes)."""
    from . import models, zoo

    if weights is None:
        if model not in ("small_vgg", "small_resnet"):
            raise ParamError("weights", f"model {model!r} needs a weights file (only the concept-world nets "
                                        f"small_vgg and small_resnet are trained by the zoo)")
        return zoo.subject(model, "concept_world", None, None, scale, device, progress).model.eval()
    if num_classes is None:
        raise ParamError("num_classes", "give the number of classes of the weights file (e.g. 365 for Places365, "
                                        "1000 for ImageNet)")
    return models.build(model, int(num_classes), weights=weights).eval().to(pick_device(device))


def describe(results: Mapping[str, LayerDissection], coverage: pd.DataFrame) -> str:
    """Markdown stating the detectors per layer and how many of the data set's concepts got a detector."""
    parts = []
    for layer, res in results.items():
        s = res.summary()
        parts.append(f"`{layer}`: {s['interpretable']}/{s['units']} units are detectors "
                     f"(IoU >= {res.iou_threshold:g}) covering {s['unique_concepts']} concepts")
    total, hit = int(coverage["concepts"].sum()), int(coverage["with detector"].sum())
    per = ", ".join(f"{r['category']} {r['with detector']}/{r['concepts']}" for _, r in coverage.iterrows())
    return ("; ".join(parts) + f". Over all dissected layers, {hit} of the {total} concepts present in the data "
            f"set have at least one detector unit ({per}).")
