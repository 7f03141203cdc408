"""Network Dissection (Bau et al., CVPR 2017): the math of unit-by-concept IoU, as streaming statistics.

The method, as the paper and its code (NetDissect, NetDissect-Lite) compute it, for a probed
layer with units k, activation maps A_k(x) of the images x of a Broden-format data set and concept
labels c of categories cat(c):

1. Threshold: T_k is the ``1 - quantile`` (0.995) quantile of unit k's activations over all
   spatial positions of all images, at feature-map resolution:  P(A_k > T_k) = quantile = 0.005.
2. Mask: each activation map is upsampled to the segmentation size, S_k(x), and binarised,
   M_k(x) = S_k(x) > T_k. Upsampling (``upsample``): 'bilinear' (NetDissect-Lite: the map's
   samples at the centres of equal cells, ``F.interpolate(align_corners=False)``) or
   'receptive_field' (the original NetDissect, ``upsample.upsampleL``): sample a of the map sits at
   the centre of its receptive field, ``c_a = (o + s // 2) // r + a * (t // r)`` segmentation
   pixels for the layer's field map (offset o, size s, step t in input pixels) and the reduction
   r = round(image size / segmentation size); the map is interpolated linearly between the c_a
   and held constant beyond them (a degree-1 ``RectBivariateSpline``).
3. Counts over the data set, with L_c(x) the pixels labelled c (a whole-image label counts every
   pixel):
       I[k, c] = sum_x |M_k(x) & L_c(x)|,      G[c] = sum_x |L_c(x)|,
       A_cat[k, cat] = sum_x |M_k(x)| over the images x that count for the category:
   ``union_rule="image"`` (original NetDissect): the images holding a label of the category;
   ``union_rule="lite"`` (NetDissect-Lite, used by its published tallies): the images where the
   mask overlaps a pixel label of the category or that hold a whole-image label of it.
4. IoU[k, c] = I[k, c] / (A_cat[k, cat(c)] + G[c] - I[k, c])   (0 when the union is empty).
5. Per unit, the best label of each category and overall; a unit is a *detector* of its best
   label when IoU >= iou_threshold (0.04).
6. Counting detectors (``counting``), with best_cat(k) = argmax over the labels c of category
   cat of IoU[k, c]:
   - 'paper' (the paper's Fig. of unique detectors across networks, its data file
     ``semantics_cvpr_release.mat``): per category, detectors = #{k : IoU[k, best_cat(k)] >= t}
     and unique detectors = #{best_cat(k) : k a detector of cat}; over all categories, detectors =
     #{k : max_c IoU[k, c] >= t} and unique detectors = the sum of the per-category unique counts.
     A unit counts in every category where its best label reaches t.
   - 'top_label' (NetDissect-Lite's report header "N units covering K concepts"): each unit counts
     once, in the category of its overall best label; unique = distinct (category, label) pairs.

Computed in two streaming passes (`netanatomy.streaming` statistics): `UnitThresholds` keeps each
unit's top ``quantile * N * H * W + 1`` activations, from which step 1's quantile follows exactly
(numpy's linear interpolation; or a seeded sample when that buffer is too large), and each unit's
top images; `UnitTally` adds steps 2-3 batch by batch as matrix products (`tally_batch`).
`iou_from_counts`, `make_tally` and `tally_summary` give steps 4-6 in NetDissect-Lite's tally.csv
format. Memory is bounded by the batch size and the quantile buffer, never by the data-set size.
`PUBLISHED` holds the paper's numbers this repository checks, with their source.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..streaming import Sum, TopK

UNION_RULES = ("image", "lite")
QUANTILE_METHODS = ("auto", "exact", "sample")
#: Step 2's upsampling: NetDissect-Lite's bilinear, the original NetDissect's receptive-field-centred.
UPSAMPLINGS = ("bilinear", "receptive_field")
#: Step 6's ways of counting detectors (see the module docstring).
COUNTINGS = ("paper", "top_label")
#: Label written in tally.csv for a category in which a unit has no overlap at all (IoU 0).
NO_LABEL = "-"
#: NetDissect-Lite's input normalisation as (mean, std) of RGB on the 0-1 scale: it subtracts the
#: BGR mean [109.5388, 118.6897, 124.6901] and divides by 255 * 0.224 (feature_operation.py,
#: ``FeatureOperator.mean`` and ``input.div_(255.0 * 0.224)``), not torchvision's ImageNet mean/std.
LITE_NORMALIZE = ((124.6901 / 255, 118.6897 / 255, 109.5388 / 255), (0.224, 0.224, 0.224))

#: The paper's numbers checked here. Source: ``semantics_cvpr_release.mat`` in CSAILVision/NetDissect
#: ``plot/`` (struct ``stat``), the data behind the paper's cross-network figure of unique detectors
#: (``plot/semantics_allnetwork.pdf``), rows ``num_detectors`` and ``num_uniquedetectors`` in the
#: order of `PUBLISHED_CONCEPTS`, for the five networks whose per-unit tallies NetDissect publishes
#: in ``plot/<csv name>.csv`` (`PUBLISHED_CSV` maps the CSV names to the .mat's network names; the
#: counts of each CSV under the 'paper' counting equal its row exactly, which the tests check).
#: ``unique_top_label``: distinct (category, label) pairs among the units whose overall best label
#: reaches 0.04 in the same CSV (our count of the published file under the 'top_label' counting;
#: the paper does not print it).
PUBLISHED_CONCEPTS = ("all", "object", "part", "scene", "material", "texture", "color")
PUBLISHED = {
    "caffe_reference_imagenet": {"layer": "conv5", "units": 256, "unique_top_label": 50,
                                 "detectors": (97, 49, 26, 5, 4, 45, 6), "unique": (61, 21, 8, 4, 1, 23, 4)},
    "caffe_reference_places205": {"layer": "conv5", "units": 256, "unique_top_label": 60,
                                  "detectors": (107, 78, 14, 17, 4, 31, 2), "unique": (79, 36, 8, 12, 1, 20, 2)},
    "caffe_reference_places365": {"layer": "conv5", "units": 256, "unique_top_label": 72,
                                  "detectors": (118, 81, 17, 21, 3, 47, 2), "unique": (91, 40, 9, 13, 2, 25, 2)},
    "resnet-152-torch-imagenet": {"layer": "caffe.Eltwise_510", "units": 2048, "unique_top_label": 197,
                                  "detectors": (1325, 858, 268, 494, 49, 407, 3),
                                  "unique": (242, 75, 23, 89, 8, 45, 2)},
    "resnet-152-torch-places365": {"layer": "caffe.Eltwise_510", "units": 2048, "unique_top_label": 278,
                                   "detectors": (1452, 774, 308, 1045, 19, 300, 2),
                                   "unique": (347, 84, 26, 188, 5, 42, 2)},
}
PUBLISHED_CSV = {"caffe_reference_imagenet": "caffe_reference_imagenet",
                 "caffe_reference_places205": "caffe_reference_places205",
                 "caffe_reference_places365": "caffe_reference_places365",
                 "ResNet-152-model_imagenet": "resnet-152-torch-imagenet",
                 "ResNet-152-model_places365": "resnet-152-torch-places365"}


# ----------------------------------------------------------------------------- step 1: thresholds

def quantile_positions(n: int, quantile: float) -> tuple[int, float, int]:
    """For numpy's linear quantile at 1 - quantile over n values: (rank from the top of the lower
    neighbour, interpolation weight, values to keep from the top)."""
    pos = (1.0 - quantile) * (n - 1)
    lo = int(math.floor(pos))
    frac = pos - lo
    keep = n - lo  # the ascending positions lo and lo + 1 are the descending ranks n-1-lo and n-2-lo
    return n - 1 - lo, frac, keep


def threshold_from_top(top: torch.Tensor, n: int, quantile: float) -> torch.Tensor:
    """Thresholds from per-unit descending top buffers (units, k) of n values per unit."""
    rank_lo, frac, keep = quantile_positions(n, quantile)
    k = top.shape[1]
    lo_val = top[:, min(rank_lo, k - 1)]
    hi_val = top[:, max(min(rank_lo - 1, k - 1), 0)] if rank_lo >= 1 else lo_val
    return lo_val + frac * (hi_val - lo_val)


class UnitThresholds:
    """Pass 1 of one layer: each unit's threshold T_k and its top images (a streaming statistic).

    ``add(acts (B, U, h, w), idx (B,))`` with the images' data-set indices, over all `n_images`.
    `method` 'exact' keeps per unit the top ``quantile * N * h * w + 1`` activations (numpy's
    linear-interpolation quantile, exactly); 'sample' keeps the top of a Bernoulli sample of
    positions (seeded by `seed`) sized so that at most `max_buffer` values per unit are held (rank
    error about 1/sqrt(quantile * sampled) relative: with 16384, the share above T_k is 0.005 +-
    0.8% of itself, one standard deviation); 'auto' is exact when the exact buffer fits
    `max_buffer`. The top images are the `top_images` with the largest per-image maximum (ties:
    lower index first). Buffers are sized on the first batch (units and map size come from it).
    """

    def __init__(self, n_images: int, quantile: float = 0.005, method: str = "auto", max_buffer: int = 16384,
                 top_images: int = 10, seed: int = 0):
        self.n_images, self.quantile, self.requested = n_images, quantile, method
        self.max_buffer, self.top_n = max_buffer, min(top_images, n_images)
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.units, self.hw = 0, (0, 0)

    def _size(self, units: int, hw: tuple[int, int]) -> None:
        self.units, self.hw = units, tuple(hw)
        n_total = self.n_images * hw[0] * hw[1]
        _, _, keep = quantile_positions(n_total, self.quantile)
        method = self.requested
        if method == "auto":
            method = "exact" if keep <= self.max_buffer else "sample"
        self.method = method
        # 'sample': a Bernoulli rate so that the kept top (with a 25% + 64 margin) fits max_buffer
        self.rate = 1.0 if method == "exact" else min(1.0, self.max_buffer / (1.25 * self.quantile * n_total + 64))
        self.buffer = TopK(keep if method == "exact" else self.max_buffer)
        self.top = TopK(self.top_n, index=True)

    def add(self, acts: torch.Tensor, idx: torch.Tensor) -> None:
        if not self.units:
            self._size(acts.shape[1], acts.shape[-2:])
        flat = acts.permute(1, 0, 2, 3).reshape(self.units, -1)
        if self.rate < 1.0:
            keep = torch.rand(flat.shape[1], generator=self.gen) < self.rate
            flat = flat[:, keep.to(flat.device)]
        self.buffer.add(flat)
        self.top.add(acts.amax(dim=(2, 3)).t(), idx)

    def merge(self, other: "UnitThresholds") -> None:
        """Add the statistic of another part of the data (exact for 'exact'; for 'sample' the union
        of the parts' samples, each drawn by its own generator)."""
        if not other.units:
            return
        if not self.units:
            self._size(other.units, other.hw)
        self.buffer.merge(other.buffer)
        self.top.merge(other.top)

    def state_dict(self) -> dict:
        return {"units": self.units, "hw": self.hw, "gen": self.gen.get_state(),
                "buffer": self.buffer.state_dict(), "top": self.top.state_dict()}

    def load_state_dict(self, state) -> None:
        self._size(state["units"], state["hw"])
        self.gen.set_state(state["gen"])
        self.buffer.load_state_dict(state["buffer"])
        self.top.load_state_dict(state["top"])

    def result(self) -> dict:
        """thresholds (U,), top_idx / top_val (U, n) of the top images, and how T_k was computed."""
        thr = threshold_from_top(self.buffer.values, self.buffer.count, self.quantile)
        return {"thresholds": thr.cpu(), "top_idx": self.top.indices.cpu(), "top_val": self.top.values.cpu(),
                "method": self.method, "rate": self.rate, "sampled": self.buffer.count, "hw": self.hw}


# ----------------------------------------------------------------------------- steps 2-3: the tally

def _image_labels(sg: torch.Tensor, sc: torch.Tensor, n_labels: int):
    """Each image's labels compacted to columns 1..P (P: the most any image holds).

    Returns (lab (b, P) label indices, lab_ok (b, P) which are real, col (b, n_labels + 1) the
    column of each label index in its image, 0 when absent).
    """
    b, dev = sg.shape[0], sg.device
    rows = torch.arange(b, device=dev).unsqueeze(1)
    held = torch.zeros(b, n_labels + 1, dtype=torch.bool, device=dev)
    held[rows, sg.reshape(b, -1)] = True
    held[rows, sc] = True
    held[:, 0] = False
    n_held = held.sum(1)
    p = max(1, int(n_held.max()))
    lab = torch.argsort((~held).to(torch.uint8), dim=1, stable=True)[:, :p]
    lab_ok = torch.arange(p, device=dev).unsqueeze(0) < n_held.unsqueeze(1)
    col = torch.zeros(b, n_labels + 1, dtype=torch.long, device=dev)
    col.scatter_(1, lab, torch.where(lab_ok, torch.arange(1, p + 1, device=dev).expand(b, p), 0))
    col[:, 0] = 0
    return lab, lab_ok, col


#: A field map is ((offset_y, offset_x), (size_y, size_x), (step_y, step_x)) in input pixels: output
#: position a of a layer sees input pixels [a * step + offset, a * step + offset + size) (NetDissect).
IDENTITY_FIELD = ((0, 0), (1, 1), (1, 1))


def compose_fieldmap(lower, upper):
    """The field map of `upper` stacked on `lower` (NetDissect's ``compose_fieldmap``)."""
    (o1, s1, t1), (o2, s2, t2) = lower, upper
    return (tuple(b * t + a for a, b, t in zip(o1, o2, t1)), tuple((b - 1) * t + a for a, b, t in zip(s1, s2, t1)),
            tuple(a * b for a, b in zip(t1, t2)))


def layer_fieldmap(module) -> tuple | None:
    """A module's own field map: convolutions and pooling (-padding, dilated kernel size, stride);
    other modules keep the geometry (identity); adaptive pooling has none (None)."""
    pair = (lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v))
    if isinstance(module, (torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d)):
        return None
    if not isinstance(module, (torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.AvgPool2d)):
        return IDENTITY_FIELD
    k, d = pair(module.kernel_size), pair(getattr(module, "dilation", 1))
    size = tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))
    pad = module.padding
    if isinstance(pad, str):  # 'valid' or 'same' (stride 1)
        pad = (0, 0) if pad == "valid" else tuple((si - 1) // 2 for si in size)
    return tuple(-p for p in pair(pad)), size, pair(module.stride or module.kernel_size)


def receptive_field_positions(n: int, centre: int, step: int, reduction: int) -> np.ndarray:
    """Segmentation coordinates of a map's n samples centred on their receptive fields (step 2).

    NetDissect's ``centered_arange``: ``arange(centre // r, (centre + n * t) // r, t // r)[:n]``
    with centre = o + s // 2 of the field map and t its step, in input pixels, and r the
    reduction. Where t < r (upstream would divide by zero) the step is t / r.
    """
    stride = step // reduction if step >= reduction else step / reduction
    return centre // reduction + stride * np.arange(n)


def interpolation_matrix(positions: np.ndarray, length: int) -> torch.Tensor:
    """(length, n) weights of linear interpolation at 0..length-1 between samples at increasing
    `positions`, constant beyond the first and last (a degree-1 spline, as FITPACK evaluates it)."""
    pos = np.asarray(positions, np.float64)
    out = np.zeros((length, len(pos)))
    x = np.arange(length, dtype=np.float64)
    if len(pos) == 1:
        out[:, 0] = 1.0
        return torch.from_numpy(out).float()
    j = np.clip(np.searchsorted(pos, x, side="right") - 1, 0, len(pos) - 2)
    w = np.clip((x - pos[j]) / (pos[j + 1] - pos[j]), 0.0, 1.0)
    out[np.arange(length), j] = 1.0 - w
    out[np.arange(length), j + 1] += w
    return torch.from_numpy(out).float()


def receptive_field_grid(feature_hw: tuple[int, int], seg_hw: tuple[int, int], centre: tuple[int, int],
                         step: tuple[int, int], reduction: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows (sh, h), columns (sw, w)) interpolation matrices of the receptive-field-centred upsampling."""
    return tuple(interpolation_matrix(receptive_field_positions(n, c, t, reduction), m)
                 for n, m, c, t in zip(feature_hw, seg_hw, centre, step))


def _upsample(maps: torch.Tensor, seg_hw: tuple[int, int], grid) -> torch.Tensor:
    """(b, A, h, w) maps -> (b, sh * sw, A) upsampled: bilinear (grid None) or by the matrices `grid`."""
    b, n_act = maps.shape[:2]
    sh, sw = seg_hw
    if grid is not None:  # columns, then rows, as two broadcast matrix products in the (b, y, x, A) layout
        rows, cols = (g.to(maps.device, maps.dtype) for g in grid)
        per_row = torch.matmul(cols, maps.permute(0, 2, 3, 1))  # (b, h, sw, A)
        return torch.matmul(rows, per_row.reshape(b, maps.shape[2], sw * n_act)).reshape(b, sh * sw, n_act)
    # channels-last maps: bilinear upsampling vectorises over units (several times faster on
    # CPU) and the result, viewed as (b, S, A), feeds the product without a copy
    maps = maps.contiguous(memory_format=torch.channels_last)
    up = F.interpolate(maps, size=(sh, sw), mode="bilinear", align_corners=False) \
        if tuple(maps.shape[-2:]) != (sh, sw) else maps.clone(memory_format=torch.channels_last)
    return up.permute(0, 2, 3, 1).reshape(b, sh * sw, n_act)


def _mask_overlaps(a: torch.Tensor, thr: torch.Tensor, active: torch.Tensor, onehot: torch.Tensor,
                   seg_hw: tuple[int, int], grid=None) -> torch.Tensor:
    """(b, U, P + 1) pixels of each unit's mask under each of the image's labels (column 0: mask size).

    Each image's *active* units (map maximum above threshold; the others have empty masks) are
    gathered and padded to the largest count A, upsampled (`_upsample`) and thresholded in place
    into a float mask (b, S, A); one ``torch.bmm`` with the one-hot labels (b, P + 1, S) gives
    every overlap.
    """
    b, units, h, w = a.shape
    sh, sw = seg_hw
    dev = a.device
    overlap = torch.zeros(b, units, onehot.shape[1], dtype=torch.float64, device=dev)
    count = active.sum(1)
    n_act = int(count.max()) if b else 0
    if not n_act:
        return overlap
    order = torch.argsort((~active).to(torch.uint8), dim=1, stable=True)[:, :n_act]  # (b, A)
    valid = torch.arange(n_act, device=dev).unsqueeze(0) < count.unsqueeze(1)
    up = _upsample(a.gather(1, order[:, :, None, None].expand(b, n_act, h, w)), (sh, sw), grid)
    slot_thr = torch.where(valid, thr[order], torch.full_like(thr[order], float("inf")))
    up.gt_(slot_thr.unsqueeze(1))  # in place: 1.0 above threshold, else 0.0 (padding: never)
    part = torch.bmm(onehot, up).transpose(1, 2).double()  # (b, A, P + 1)
    overlap.scatter_(1, order.unsqueeze(2).expand(b, n_act, onehot.shape[1]), part)
    return overlap


def tally_batch(acts: torch.Tensor, thresholds: torch.Tensor, seg: torch.Tensor, scalars: torch.Tensor,
                labelcat: torch.Tensor, union_rule: str = "image", chunk: int = 1 << 25, grid=None):
    """Tally one batch with batched matrix products.

    acts (B, U, h, w) activations; thresholds (U,); seg (B, L, sh, sw) label indices (0 = none,
    1..C); scalars (B, W) whole-image label indices (0 = padding); labelcat (C + 1, K) one-hot
    of each label index's category (row 0 zero). Returns float64 (I (U, C), A_cat (U, K), G (C,),
    per-image mask sizes (B, U)). The mask is ``upsample(acts) > threshold``: bilinear, or with
    `grid` (`receptive_field_grid`) centred on the receptive fields.

    Per chunk of images (at most `chunk` elements in the largest mask block): each image's labels
    are compacted to its own P columns and one-hot encoded per pixel, (b, P + 1, S) with row 0 all
    ones (it yields the mask size); `_mask_overlaps` gives every active unit's overlap with every
    label of its image, which an ``index_add_`` adds into I[unit, label].
    """
    b_all, units = acts.shape[:2]
    sh, sw = seg.shape[-2:]
    s = sh * sw
    n_labels, n_cats = labelcat.shape[0] - 1, labelcat.shape[1]
    dev = acts.device
    inter = torch.zeros(units * n_labels, dtype=torch.float64, device=dev)
    act_cat = torch.zeros(units, n_cats, dtype=torch.float64, device=dev)
    truth = torch.zeros(n_labels, dtype=torch.float64, device=dev)
    sizes = torch.zeros(b_all, units, dtype=torch.float64, device=dev)
    thr = thresholds.to(device=dev, dtype=acts.dtype)
    labelcat = labelcat.to(dev).double()
    active_all = acts.amax(dim=(2, 3)) > thr  # (B, U): units whose mask can be non-empty
    a_max = max(1, int(active_all.sum(1).max()))
    step = max(1, chunk // max(1, a_max * s))
    for start in range(0, b_all, step):
        a = acts[start:start + step]
        b = a.shape[0]
        sg = seg[start:start + step].to(dev).reshape(b, -1, s)
        sc = scalars[start:start + step].to(dev)
        lab, lab_ok, col = _image_labels(sg, sc, n_labels)
        p = lab.shape[1]
        onehot = torch.zeros(b, p + 1, s, device=dev)  # (b, P + 1, S): the image's labels x pixels
        ones = torch.ones(b, 1, s, device=dev)
        for layer in range(sg.shape[1]):
            onehot.scatter_add_(1, col.gather(1, sg[:, layer]).unsqueeze(1), ones)
        onehot[:, 0, :] = 1.0  # row 0 counts every pixel: the mask size
        scal = torch.zeros(b, p + 1, device=dev)
        scal.scatter_add_(1, col.gather(1, sc), torch.ones_like(sc, dtype=torch.float32))
        scal = scal[:, 1:].double()  # (b, P): whole-image labels
        pix = onehot[:, 1:, :].sum(2).double()  # (b, P): pixels of each label
        overlap = _mask_overlaps(a, thr, active_all[start:start + b], onehot, (sh, sw), grid)
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


class UnitTally:
    """Pass 2 of one layer: the counts I, A_cat and G over the data set (a streaming statistic).

    ``add(acts (B, U, h, w), seg, scalars, idx)`` tallies a batch (`tally_batch`) with the
    thresholds of pass 1 and keeps the activation maps of each unit's top images (`top_idx`
    (U, n), maps of size `hw`) for the report. `grid`: see `tally_batch`. Merging the tallies of
    disjoint parts of the data is exact.
    """

    def __init__(self, thresholds: torch.Tensor, labelcat: torch.Tensor, top_idx: torch.Tensor,
                 hw: tuple[int, int], union_rule: str = "image", chunk: int = 1 << 25, grid=None):
        self.thresholds, self.labelcat, self.union_rule, self.chunk = thresholds, labelcat, union_rule, chunk
        self.grid = grid
        self.counts = {"inter": Sum(), "act_cat": Sum(), "truth": Sum()}
        self.top_maps = torch.zeros(top_idx.shape[0], top_idx.shape[1], *hw)
        self.wanted: dict[int, list[tuple[int, int]]] = {}  # image index -> [(unit, slot)]
        for u, slot in zip(*np.nonzero(top_idx.numpy() >= 0)):
            self.wanted.setdefault(int(top_idx[u, slot]), []).append((int(u), int(slot)))

    def add(self, acts: torch.Tensor, seg: torch.Tensor, scalars: torch.Tensor, idx: torch.Tensor) -> None:
        dev = acts.device
        inter, act_cat, truth, _ = tally_batch(acts, self.thresholds.to(dev), seg, scalars, self.labelcat.to(dev),
                                               self.union_rule, self.chunk, self.grid)
        for name, value in zip(("inter", "act_cat", "truth"), (inter, act_cat, truth)):
            self.counts[name].add(value)
        for b, i in enumerate(idx.tolist()):
            for u, slot in self.wanted.get(i, ()):
                self.top_maps[u, slot] = acts[b, u].cpu()

    def merge(self, other: "UnitTally") -> None:
        for name, stat in self.counts.items():
            stat.merge(other.counts[name])
        self.top_maps += other.top_maps  # each image lies in one part: the other's slots are zero here

    def state_dict(self) -> dict:
        return {"counts": {name: stat.state_dict() for name, stat in self.counts.items()}, "top_maps": self.top_maps}

    def load_state_dict(self, state) -> None:
        for name, stat in self.counts.items():
            stat.load_state_dict(state["counts"][name])
        self.top_maps = state["top_maps"]

    def result(self) -> dict:
        """inter (U, C), act_cat (U, K), truth (C,) and top_maps (U, n, h, w) as numpy arrays."""
        out = {name: stat.total.cpu().numpy() for name, stat in self.counts.items()}
        return {**out, "top_maps": self.top_maps.numpy()}


# ----------------------------------------------------------------------------- steps 4-5: IoU and labels

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


def tally_categories(tally: pd.DataFrame) -> list[str]:
    """Category names of a tally's per-category column groups, in column order."""
    return [c[:-len("-label")] for c in tally.columns if c.endswith("-label")]


def tally_summary(tally: pd.DataFrame, iou_threshold: float = 0.04, categories: Sequence[str] | None = None,
                  counting: str = "top_label") -> dict:
    """Detector counts of a tally (ours or a published one) under `counting` (step 6 of the module).

    Returns units, interpretable (units whose overall best IoU >= iou_threshold: the same under
    both countings), unique_concepts (all categories), per_category {cat: detectors} and
    unique_per_category {cat: unique detectors}, and the counting used. The default 'top_label' is
    NetDissect-Lite's header (and what the Dynamic-K paper's tallies report); the paper's own
    figures use 'paper'.
    """
    if counting not in COUNTINGS:
        raise ValueError(f"counting must be one of {COUNTINGS}, got {counting!r}")
    cats = list(categories) if categories is not None else tally_categories(tally)
    top = tally[tally["score"] >= iou_threshold]
    if counting == "top_label":
        per = {c: int((top["category"] == c).sum()) for c in cats}
        uniq = {c: int(top.loc[top["category"] == c, "label"].nunique()) for c in cats}
        unique = int(top[["category", "label"]].drop_duplicates().shape[0])
    else:
        per, uniq = {}, {}
        for c in cats:
            hit = (tally[f"{c}-iou"] >= iou_threshold) & (tally[f"{c}-label"] != NO_LABEL)
            per[c], uniq[c] = int(hit.sum()), int(tally.loc[hit, f"{c}-label"].nunique())
        unique = sum(uniq.values())
    return {"units": int(len(tally)), "interpretable": int(len(top)), "unique_concepts": unique,
            "per_category": per, "unique_per_category": uniq, "counting": counting}
