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
- `RandomConv`: a seeded random 5x5 stride-4 convolution to 5 units (layer ``conv``), no ReLU.
- `brute_force_tally(acts, thresholds, ds, rule)`: I, A_cat and G by explicit loops.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
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


def brute_force_tally(acts: np.ndarray, thresholds: np.ndarray, ds, rule: str):
    """(I (units, labels), A_cat (units, categories), G (labels,)) of activations `acts` (N, U, h, w)
    on the Broden set `ds`, per image and per unit in Python, the way NetDissect-Lite tallies.

    Each map is upsampled bilinearly to the segmentation size and thresholded; a whole-image label
    counts every pixel; A_cat counts a mask in the categories the image holds (rule 'image') or in
    those its mask overlaps (rule 'lite').
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
                           align_corners=False)[0].numpy()
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
