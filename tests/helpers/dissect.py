"""Network Dissection test helpers: a planted Broden set, planted and random models, and a
brute-force tally that follows NetDissect-Lite's per-image, per-unit loop.

- `planted_data(n, size, seed, side, p)`: 32 px images (by default) where channel 0 is
  ``60 * object id`` inside rare ``side x side`` squares of objects 1 disk, 2 star, 3 ring (each
  present in an image with probability `p`), channel 2 is 250 inside the squares of material 300
  "metal" (elsewhere below 200), channel 1 is uniform noise; scene 401 / 402 is a whole-image
  label drawn at random. Returns `broden.write_broden`'s arguments (images, labels, pixel maps,
  image labels).
- `Planted`: unit k (1-based) computes the 4x4 average of the indicator ``pixel[channel] ==
  value`` of `Planted.UNITS[k - 1]`, so its dissection answer is `Planted.TRUTH[k - 1]`: units 2,
  5, 6 detect the objects star, disk, ring and unit 3 the material metal with IoU > 0.2; units 1,
  4, 7 are a smoothed copy of the noise channel (no concept: IoU < 0.04). Its output is the layer
  ``features``; on `planted_data()` 4 of 7 units are detectors of 4 concepts (3 object, 1 material).
- `RandomConv`: a seeded random 5x5 stride-4 convolution to 5 units (layer ``conv``), no ReLU;
  its field map is offset -2, size 5, step 4 (centre 0), so NetDissect's receptive-field-centred
  upsampling places its samples at segmentation pixels 0, 2, 4, ... (reduction 2).
- `upstream_upsample(fieldmap, acts, shape, reduction)`: NetDissect's ``upsampleL`` with scipy.
- `brute_force_tally(acts, thresholds, ds, rule, upsample)`: I, A_cat and G by explicit loops.
- `GeometryNet`: a stem (7x7 stride 2, 3x3 max-pool stride 2), a residual block (3x3 stride-2 and
  3x3 convolutions beside a 1x1 stride-2 shortcut, added) and a 3x3 ``head``, all weights 1 and
  biases 0, so every activation is >= 0 and a pixel reaches exactly the outputs whose receptive
  field holds it; `lit_rows(model, layer, size, row)` reads the receptive field of an output row
  off that (the oracle of the field maps: ``head``'s is offset -25, size 51, step 8 by hand).
- `hand_tally()`: a three-unit tally where the paper's counting and the top-label counting differ
  (answers in its docstring).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.interpolate import RectBivariateSpline
from torch import nn

OBJECTS = {1: "disk", 2: "star", 3: "ring"}


def planted_data(n: int = 160, size: int = 32, seed: int = 0, side: int = 8, p: float = 0.08):
    """(images, labels, pixel maps, image labels) of the planted Broden set described above."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size, 3), np.uint8)
    images[..., 1] = rng.integers(0, 256, (n, size, size))
    images[..., 2] = rng.integers(0, 200, (n, size, size))
    obj = np.zeros((n, size, size), np.int64)
    mat = np.zeros((n, size, size), np.int64)
    for i in range(n):
        for lab in (1, 2, 3):
            if rng.random() < p:
                y, x = rng.integers(0, size - side, 2)
                obj[i, y:y + side, x:x + side] = lab
        if rng.random() < p:
            y, x = rng.integers(0, size - side, 2)
            mat[i, y:y + side, x:x + side] = 300
    images[..., 0] = (obj * 60).astype(np.uint8)
    images[..., 2] = np.where(mat > 0, 250, images[..., 2])
    scene = rng.choice([401, 402], size=n)
    labels = {"object": [(k, v) for k, v in OBJECTS.items()], "material": [(300, "metal")],
              "scene": [(401, "kitchen-s"), (402, "street-s")]}
    return images, labels, {"object": obj, "material": mat}, {"scene": scene}


class Planted(nn.Module):
    """Unit k is the 4x4-pooled indicator of concept TRUTH[k - 1] (read from the pixels), or pooled noise."""

    # (channel, value) per unit; None = a noise unit
    UNITS = [None, (0, 120), (2, 250), None, (0, 60), (0, 180), None]
    TRUTH = [None, ("object", "star"), ("material", "metal"), None, ("object", "disk"), ("object", "ring"), None]

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.features = nn.Identity()

    def forward(self, x):
        v = torch.round(x * 255)
        # noise: a smooth random field from the noise channel (independent of every label)
        noise = F.avg_pool2d(F.avg_pool2d(x[:, 1:2], 4), 3, 1, 1)[:, 0]
        maps = []
        for spec in self.UNITS:
            if spec is None:
                maps.append(noise + 0.01 * len(maps))
            else:
                maps.append(F.avg_pool2d((v[:, spec[0]] == spec[1]).float()[:, None], 4)[:, 0])
        feats = torch.stack(maps, 1) * self.scale
        # a tiny position-dependent ramp breaks ties between equal pooled values
        ramp = torch.linspace(0, 1e-4, feats.shape[-1], device=x.device)
        return self.features(feats + ramp.view(1, 1, 1, -1) * (feats > 0))


class RandomConv(nn.Module):
    """``conv``: Conv2d(3, 5, 5, stride=4, padding=2) with torch.manual_seed(0) weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 5, stride=4, padding=2)

    def forward(self, x):
        return self.conv(x)


def upstream_upsample(fieldmap, acts: np.ndarray, shape: tuple[int, int], reduction: int) -> np.ndarray:
    """NetDissect's ``upsample.upsampleL(fieldmap, acts, shape=shape, reduction=reduction)`` (src/upsample.py):
    each map of acts (U, h, w) as a degree-1 ``RectBivariateSpline`` through its samples at
    ``centered_arange`` positions, evaluated at every segmentation pixel."""
    offset, size, step = fieldmap
    r = reduction
    ay, ax = (np.arange((s // 2 + o) // r, (s // 2 + o + a * t) // r, t // r)[:a]
              for o, s, t, a in zip(offset, size, step, acts.shape[1:]))
    iy, ix = np.arange(shape[0]), np.arange(shape[1])
    return np.stack([RectBivariateSpline(ay, ax, m.astype(np.float64), kx=1, ky=1)(iy, ix, grid=True) for m in acts])


def brute_force_tally(acts: np.ndarray, thresholds: np.ndarray, ds, rule: str, upsample=None):
    """(I (units, labels), A_cat (units, categories), G (labels,)) of activations `acts` (N, U, h, w)
    on the Broden set `ds`, per image and per unit in Python, the way NetDissect-Lite tallies.

    Each map is upsampled bilinearly to the segmentation size (or by ``upsample(maps, (sh, sw))``)
    and thresholded; a whole-image label counts every pixel; A_cat counts a mask in the categories
    the image holds (rule 'image') or in those its mask overlaps (rule 'lite').
    """
    n, units = acts.shape[:2]
    c = ds.num_labels
    cats = ds.labelcat.argmax(1)  # category of each label index (row 0 unused)
    inter = np.zeros((units, c))
    act_cat = np.zeros((units, ds.labelcat.shape[1]))
    truth = np.zeros(c)
    for i in range(n):
        seg, scal = ds.load_segmentation(i)
        sh, sw = seg.shape[-2:]
        for lab in seg.ravel():
            if lab:
                truth[lab - 1] += 1
        for lab in scal:
            truth[lab - 1] += sh * sw
        held = {cats[lab] for lab in np.unique(np.concatenate([seg.ravel(), scal])) if lab}
        up = F.interpolate(torch.from_numpy(acts[i:i + 1]), size=(sh, sw), mode="bilinear",
                           align_corners=False)[0].numpy() if upsample is None else upsample(acts[i], (sh, sw))
        for u in range(units):
            mask = up[u] > thresholds[u]
            size = int(mask.sum())
            under = set()
            for layer in seg:
                for lab in layer[mask]:
                    if lab:
                        inter[u, lab - 1] += 1
                        under.add(cats[lab])
            for lab in scal:
                inter[u, lab - 1] += size
                under.add(cats[lab])
            for k in (held if rule == "image" else (under if size else set())):
                act_cat[u, k] += size
    return inter, act_cat, truth


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(2, 2, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))
        self.shortcut = nn.Conv2d(2, 2, 1, stride=2)

    def forward(self, x):
        return F.relu(self.main(x) + self.shortcut(x))


class GeometryNet(nn.Module):
    """stem (7x7/2 conv, ReLU, 3x3/2 max-pool, padding 3 and 1), ``block`` (residual, stride 2), ``head`` (3x3).

    Field maps by hand (offset, size, step): stem (-5, 11, 4); block's widest path (-17, 35, 8);
    head (-25, 51, 8). All weights are 1 and biases 0.
    """

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 2, 7, stride=2, padding=3), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1))
        self.block = _Block()
        self.head = nn.Conv2d(2, 2, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


def lit_rows(model: nn.Module, layer: str, size: int, row: int) -> tuple[int, int]:
    """(first, last) input rows that reach output row `row` of `layer` (each input row lit alone, all ones)."""
    from netanatomy.hooks import run, trace

    x = torch.zeros(size, 3, size, size)
    x[torch.arange(size), :, torch.arange(size), :] = 1.0
    with torch.no_grad(), trace(model, [layer], stop=True, detach=True) as t:
        run(model, x)
    hit = np.flatnonzero(t.outputs[layer][:, :, row, :].amax(dim=(1, 2)).numpy() > 0)
    assert np.all(np.diff(hit) == 1), "a receptive field is contiguous"
    return int(hit[0]), int(hit[-1])


def hand_tally() -> pd.DataFrame:
    """Three units in tally.csv form, categories object and scene, detector threshold 0.04.

    unit 1: object dog 0.10, scene street-s 0.06 (top label: object dog);
    unit 2: object dog 0.05, scene kitchen-s 0.08 (top label: scene kitchen-s);
    unit 3: object cat 0.03, scene street-s 0.02 (no detector).
    Top-label counting: 2 detectors, object 1 (dog), scene 1 (kitchen-s), 2 unique.
    The paper's counting: 2 detectors over all; object 2 units (dog, dog: 1 unique); scene 2 units
    (street-s, kitchen-s: 2 unique); 3 unique detectors in all.
    """
    rows = [(1, "object", "dog", 0.10, "dog", 0.10, "street-s", 0.06),
            (2, "scene", "kitchen-s", 0.08, "dog", 0.05, "kitchen-s", 0.08),
            (3, "object", "cat", 0.03, "cat", 0.03, "street-s", 0.02)]
    return pd.DataFrame(rows, columns=["unit", "category", "label", "score", "object-label", "object-iou",
                                       "scene-label", "scene-iou"])
