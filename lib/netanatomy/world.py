"""The synthetic concept world: a deterministic RGB image world with exact concept masks.

Every image shows one of ten *scenes* (the classification label) made of horizontal regions
(sky, a middle band, ground), each painted in a named colour with a texture, plus 1-3 occluding
*objects* (shapes with a colour, a texture and, for some shapes, parts). Pixel masks give, for
every pixel, the visible object, part, colour, texture and material; image labels give the scene
and the dominant background texture. The world is the built-in data set of every notebook (NAD
path search, Network Dissection in Broden form, Dynamic-K activation, decomposition).

Scenes come in five related pairs (`SCENE_PAIRS`). A pair shares layout, palette and materials and
differs only in overlapping cue distributions (sky and ground shade, horizon height, band presence
and size, texture kind and scale, object priors). With probability `WorldConfig.mix` an image
draws its background style from the partner scene, so the task is learnable to high but never
perfect accuracy, and the errors fall within pairs.

Label ids. `vocabulary()` maps each category to a list of names whose index 0 is ``'-'``
(unlabeled): a mask or image-label value ``i > 0`` means ``vocabulary()[category][i]``, i.e.
``NAMES[i - 1]`` of the module tuple (`SHAPES`, `PARTS`, `COLORS`, `TEXTURES`, `MATERIALS`,
`SCENES`). The classification label is 0-based: ``labels == image_labels['scene'] - 1`` and
``class_names == SCENES``.

Pixel values. A pixel labelled with colour c has RGB within `COLOR_TOLERANCE` (per channel) of
``PALETTE[c]`` when its texture is ``plain``, and within ``COLOR_TOLERANCE + TEXTURE_AMP`` otherwise.

Determinism: sample ``i`` of a split depends only on ``(seed, split, i)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .cache import cached, cached_folder
from .errors import ParamError
from .runtime import atomic_savez, cache_dir, cache_key

# ----------------------------------------------------------------------------- vocabularies

#: The ten scene classes, sorted alphabetically so that ImageFolder's sorted folder order equals
#: the class index.
SCENES: tuple[str, ...] = ("beach", "city", "desert", "field", "forest",
                           "glacier", "lake", "ocean", "snow", "street")
#: Related scene pairs (shared layout and palette; confusions concentrate within them).
SCENE_PAIRS: tuple[tuple[str, str], ...] = (("beach", "desert"), ("field", "forest"), ("lake", "ocean"),
                                            ("city", "street"), ("glacier", "snow"))
SHAPES: tuple[str, ...] = ("disk", "square", "triangle", "star", "cross", "ring")
PARTS: tuple[str, ...] = ("star_tip", "star_core", "cross_arm", "cross_centre", "triangle_apex", "triangle_base")
#: Which shape each part belongs to.
PART_OF: dict[str, str] = {"star_tip": "star", "star_core": "star", "cross_arm": "cross",
                           "cross_centre": "cross", "triangle_apex": "triangle", "triangle_base": "triangle"}
#: Named colours and their nominal RGB.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35),
    "orange": (240, 135, 25),
    "yellow": (240, 220, 45),
    "green": (65, 165, 55),
    "darkgreen": (25, 90, 40),
    "blue": (35, 75, 200),
    "lightblue": (140, 190, 240),
    "purple": (135, 45, 175),
    "brown": (125, 80, 35),
    "tan": (215, 185, 130),
    "white": (240, 240, 240),
    "grey": (125, 125, 130),
    "black": (20, 20, 20),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
#: Colours objects are painted in.
OBJECT_COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "white", "black", "orange", "purple")
TEXTURES: tuple[str, ...] = ("plain", "stripes", "dots", "checker", "noise")
MATERIALS: tuple[str, ...] = ("sky", "water", "sand", "grass", "foliage", "rock", "building", "asphalt", "snow")
#: Categories with a per-pixel mask, and with an image-level label.
PIXEL_CATEGORIES: tuple[str, ...] = ("object", "part", "color", "texture", "material")
IMAGE_CATEGORIES: tuple[str, ...] = ("scene", "texture")
_NAMES = {"scene": SCENES, "object": SHAPES, "part": PARTS, "color": COLORS,
          "texture": TEXTURES, "material": MATERIALS}

#: Per-region shade offset bound (per channel): scene shift plus per-image jitter.
SHADE_MAX = 28
#: Per-pixel noise bound (uniform integer noise in [-NOISE_AMP, NOISE_AMP]).
NOISE_AMP = 8
#: Texture modulation bound (added equally to the three channels).
TEXTURE_AMP = 32
#: Plain pixels lie within this many levels (per channel) of their colour's PALETTE entry.
COLOR_TOLERANCE = SHADE_MAX + NOISE_AMP

#: Normalisation constants of the world's images (RGB, computed from the 6,000 default-config train images).
MEAN: tuple[float, float, float] = (0.5264, 0.6251, 0.6722)
STD: tuple[float, float, float] = (0.2665, 0.2226, 0.3006)

#: Bump when the renderer changes: old cache files are then ignored.
WORLD_VERSION = 3
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}


def vocabulary() -> dict[str, list[str]]:
    """Names per category; index 0 is '-' (unlabeled), id i > 0 names ``vocabulary()[cat][i]``."""
    return {cat: ["-", *names] for cat, names in _NAMES.items()}


# ----------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class WorldConfig:
    """Parameters of a concept world. Same config and split give identical pixels and masks."""

    seed: int = 0
    image_size: int = 64
    n_train: int = 6000
    n_val: int = 1500
    n_test: int = 1500
    min_objects: int = 1
    max_objects: int = 3
    #: probability that an image's background style is drawn from its partner scene
    mix: float = 0.1

    def __post_init__(self):
        for name in ("seed", "image_size", "n_train", "n_val", "n_test", "min_objects", "max_objects"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ParamError(name, f"must be an integer, got {value!r}")
        if self.seed < 0:
            raise ParamError("seed", f"must be >= 0, got {self.seed}")
        if not 16 <= self.image_size <= 1024:
            raise ParamError("image_size", f"must be between 16 and 1024 pixels, got {self.image_size}")
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 0:
                raise ParamError(name, f"must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.min_objects <= self.max_objects <= 8:
            raise ParamError("max_objects", f"need 0 <= min_objects <= max_objects <= 8, "
                                            f"got {self.min_objects} and {self.max_objects}")
        if not (isinstance(self.mix, (int, float)) and 0.0 <= self.mix <= 1.0):
            raise ParamError("mix", f"must be a probability in [0, 1], got {self.mix!r}")

    def size(self, split: str) -> int:
        """Number of images in a split."""
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[_check_split(split)]


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ParamError("split", f"{split!r} is not a concept-world split; use one of {list(SPLITS)}")
    return split


# ----------------------------------------------------------------------------- scene specifications

def _spec(**kw):
    base = dict(
        sky=(("lightblue", 1.0),), sky_shift=(0, 0, 0),
        horizon=(0.5, 0.07), wave=(0.02, 0.04),
        band_kind="flat", band_colors=("blue",), band_material="water", band_p=0.5, band_t=(0.05, 0.12),
        band_textures={"plain": 1.0},
        ground="tan", ground_material="sand", ground_shift=(0, 0, 0),
        ground_textures={"plain": 1.0}, period=(0.06, 0.12), angle=(0.0, 90.0),
        shapes=("disk", "square"), colors=("red", "yellow"),
    )
    base.update(kw)
    return base


# Each pair shares layout, palette and materials; members differ in overlapping distributions.
_SPECS: dict[str, dict] = {
    "beach": _spec(sky_shift=(-8, 0, 8), horizon=(0.40, 0.07), wave=(0.0, 0.015),
                   band_kind="flat", band_colors=("blue",), band_material="water", band_p=0.8, band_t=(0.06, 0.16),
                   band_textures={"plain": 0.5, "stripes": 0.5},
                   ground="tan", ground_material="sand", ground_shift=(8, 8, 6),
                   ground_textures={"dots": 0.45, "plain": 0.35, "noise": 0.2}, period=(0.08, 0.14),
                   shapes=("disk", "ring"), colors=("red", "yellow")),
    "desert": _spec(sky_shift=(8, 4, -6), horizon=(0.50, 0.07), wave=(0.02, 0.05),
                    band_kind="flat", band_colors=("blue",), band_material="water", band_p=0.25, band_t=(0.03, 0.10),
                    band_textures={"plain": 0.7, "stripes": 0.3},
                    ground="tan", ground_material="sand", ground_shift=(10, -4, -12),
                    ground_textures={"stripes": 0.45, "plain": 0.35, "noise": 0.2}, period=(0.10, 0.18),
                    angle=(10.0, 20.0),
                    shapes=("disk", "triangle"), colors=("yellow", "orange")),
    "field": _spec(sky_shift=(0, 0, 4), horizon=(0.50, 0.07), wave=(0.01, 0.03),
                   band_kind="trees", band_colors=("darkgreen",), band_material="foliage", band_p=0.45, band_t=(0.03, 0.12),
                   band_textures={"plain": 0.6, "noise": 0.4},
                   ground="green", ground_material="grass", ground_shift=(10, 8, -4),
                   ground_textures={"stripes": 0.5, "plain": 0.3, "noise": 0.2}, period=(0.07, 0.12),
                   angle=(80.0, 25.0),
                   shapes=("square", "star"), colors=("white", "purple")),
    "forest": _spec(sky_shift=(-4, -2, 0), horizon=(0.60, 0.07), wave=(0.02, 0.04),
                    band_kind="trees", band_colors=("darkgreen",), band_material="foliage", band_p=0.85, band_t=(0.08, 0.25),
                    band_textures={"noise": 0.6, "plain": 0.4},
                    ground="green", ground_material="grass", ground_shift=(-10, -8, 0),
                    ground_textures={"noise": 0.45, "plain": 0.3, "dots": 0.25}, period=(0.06, 0.10),
                    shapes=("star", "cross"), colors=("purple", "red")),
    "lake": _spec(sky_shift=(0, 4, 0), horizon=(0.45, 0.07), wave=(0.0, 0.01),
                  band_kind="flat", band_colors=("darkgreen",), band_material="grass", band_p=0.8, band_t=(0.03, 0.09),
                  band_textures={"plain": 0.5, "noise": 0.5},
                  ground="blue", ground_material="water", ground_shift=(0, 14, -6),
                  ground_textures={"plain": 0.45, "noise": 0.35, "stripes": 0.2}, period=(0.06, 0.10),
                  angle=(0.0, 10.0),
                  shapes=("ring", "square"), colors=("green", "white")),
    "ocean": _spec(sky_shift=(-6, -2, 6), horizon=(0.38, 0.07), wave=(0.0, 0.01),
                   band_kind="flat", band_colors=("darkgreen",), band_material="grass", band_p=0.25, band_t=(0.02, 0.06),
                   band_textures={"plain": 0.6, "noise": 0.4},
                   ground="blue", ground_material="water", ground_shift=(-8, -10, -4),
                   ground_textures={"stripes": 0.5, "plain": 0.3, "noise": 0.2}, period=(0.05, 0.09),
                   angle=(0.0, 8.0),
                   shapes=("ring", "triangle"), colors=("white", "orange")),
    "city": _spec(sky_shift=(4, 4, -2), horizon=(0.62, 0.06), wave=(0.0, 0.01),
                  band_kind="buildings", band_colors=("brown", "grey", "tan"), band_material="building",
                  band_p=0.95, band_t=(0.20, 0.40),
                  band_textures={"checker": 0.5, "plain": 0.3, "dots": 0.2},
                  ground="grey", ground_material="asphalt", ground_shift=(6, 6, 6),
                  ground_textures={"plain": 0.4, "noise": 0.35, "checker": 0.25}, period=(0.05, 0.09),
                  shapes=("square", "cross"), colors=("black", "red")),
    "street": _spec(sky_shift=(0, 0, 6), horizon=(0.48, 0.06), wave=(0.0, 0.01),
                    band_kind="buildings", band_colors=("brown", "grey", "tan"), band_material="building",
                    band_p=0.9, band_t=(0.08, 0.22),
                    band_textures={"checker": 0.4, "plain": 0.4, "dots": 0.2},
                    ground="grey", ground_material="asphalt", ground_shift=(-8, -8, -6),
                    ground_textures={"stripes": 0.5, "plain": 0.3, "noise": 0.2}, period=(0.08, 0.14),
                    angle=(90.0, 15.0),
                    shapes=("square", "disk"), colors=("black", "yellow")),
    "glacier": _spec(sky=(("lightblue", 0.75), ("grey", 0.25)), sky_shift=(-4, 0, 8), horizon=(0.55, 0.07),
                     wave=(0.01, 0.03),
                     band_kind="mountains", band_colors=("grey",), band_material="rock", band_p=0.9, band_t=(0.15, 0.35),
                     band_textures={"plain": 0.5, "noise": 0.5},
                     ground="white", ground_material="snow", ground_shift=(-14, -4, 0),
                     ground_textures={"noise": 0.4, "stripes": 0.3, "plain": 0.3}, period=(0.08, 0.14),
                     angle=(30.0, 30.0),
                     shapes=("triangle", "star"), colors=("blue", "black")),
    "snow": _spec(sky=(("grey", 0.55), ("lightblue", 0.45)), sky_shift=(4, 2, -2), horizon=(0.45, 0.07),
                  wave=(0.02, 0.04),
                  band_kind="mountains", band_colors=("grey",), band_material="rock", band_p=0.5, band_t=(0.05, 0.20),
                  band_textures={"plain": 0.6, "noise": 0.4},
                  ground="white", ground_material="snow", ground_shift=(4, 4, 4),
                  ground_textures={"plain": 0.45, "dots": 0.35, "noise": 0.2}, period=(0.06, 0.11),
                  shapes=("triangle", "cross"), colors=("black", "green")),
}
_PARTNER = {a: b for a, b in SCENE_PAIRS} | {b: a for a, b in SCENE_PAIRS}


def scene_concepts(scene: str) -> dict[str, list[str]]:
    """The concepts the world plants for `scene`, by Broden category: the scene itself; sky colours drawn with
    probability >= 0.5, the band's colours and material when the band appears with probability >= 0.5, the
    ground's colour and material; the ground's most likely texture; the scene's object shapes, their parts and
    its object colours (each drawn for half of the objects)."""
    if scene not in _SPECS:
        raise ParamError("scene", f"unknown scene {scene!r}; scenes: {', '.join(SCENES)}")
    s = _SPECS[scene]
    band = s["band_p"] >= 0.5
    colors = [c for c, p in s["sky"] if p >= 0.5] + (list(s["band_colors"]) if band else []) + [s["ground"]]
    return {"scene": [scene], "color": list(dict.fromkeys(colors + list(s["colors"]))),
            "material": ["sky"] + ([s["band_material"]] if band else []) + [s["ground_material"]],
            "texture": [max(s["ground_textures"], key=s["ground_textures"].get)],
            "object": list(s["shapes"]), "part": [p for p, shape in PART_OF.items() if shape in s["shapes"]]}

_C = {n: i + 1 for i, n in enumerate(COLORS)}
_T = {n: i + 1 for i, n in enumerate(TEXTURES)}
_M = {n: i + 1 for i, n in enumerate(MATERIALS)}
_S = {n: i + 1 for i, n in enumerate(SHAPES)}
_P = {n: i + 1 for i, n in enumerate(PARTS)}
_RGB = {n: np.array(rgb, np.float32) for n, rgb in PALETTE.items()}
_OBJECT_TEXTURES = {"plain": 0.5, "stripes": 0.125, "dots": 0.125, "checker": 0.125, "noise": 0.125}


# ----------------------------------------------------------------------------- rendering

@functools.lru_cache(maxsize=8)
def _grid(size: int):
    c = np.arange(size, dtype=np.float32) + 0.5
    ys, xs = np.meshgrid(c, c, indexing="ij")
    ys.flags.writeable = False
    xs.flags.writeable = False
    return ys, xs


@functools.lru_cache(maxsize=32)
def _interp_matrix(size: int, k: int) -> np.ndarray:
    """(size, k) bilinear interpolation weights from a k-point grid to `size` pixel centres."""
    pos = (np.arange(size) + 0.5) / size * (k - 1)
    i0 = np.clip(np.floor(pos).astype(int), 0, k - 2)
    frac = pos - i0
    w = np.zeros((size, k), np.float32)
    w[np.arange(size), i0] = 1 - frac
    w[np.arange(size), i0 + 1] = frac
    w.flags.writeable = False
    return w


def _choice(rng: np.random.Generator, prior) -> str:
    """Draw a name from a prior: a {name: weight} dict or a ((name, weight), ...) tuple."""
    items = list(prior.items()) if isinstance(prior, dict) else list(prior)
    u = rng.random() * sum(w for _, w in items)
    for name, w in items:
        u -= w
        if u < 0:
            return name
    return items[-1][0]


def _pick(rng: np.random.Generator, names) -> str:
    return names[int(rng.integers(len(names)))]


def _pattern(rng: np.random.Generator, texture: str, size: int, period_frac: tuple[float, float],
             angle: tuple[float, float]) -> np.ndarray | None:
    """Texture modulation in [-1, 1] over the whole grid (None for plain)."""
    if texture == "plain":
        return None
    ys, xs = _grid(size)
    period = max(3.0, size * rng.uniform(*period_frac))
    if texture == "noise":
        k = int(rng.integers(5, 11)) * max(1, size // 64)
        w = _interp_matrix(size, k)
        field_ = w @ rng.random((k, k), dtype=np.float32) @ w.T
        return np.clip((field_ - 0.5) * 4.0, -1.0, 1.0)
    # stripes: `angle` is the stripe direction in degrees (0 = horizontal lines), mean and sd
    theta = math.radians(rng.normal(angle[0], angle[1]) + 90.0) if texture == "stripes" \
        else rng.uniform(0, math.pi / 2)
    u = xs * math.cos(theta) + ys * math.sin(theta) + rng.uniform(0, period)
    if texture == "stripes":
        return np.where(np.mod(u, period) < period / 2, 1.0, -1.0).astype(np.float32)
    v = -xs * math.sin(theta) + ys * math.cos(theta) + rng.uniform(0, period)
    if texture == "checker":
        return np.where((np.floor(u / period) + np.floor(v / period)) % 2 == 0, 1.0, -1.0).astype(np.float32)
    # dots
    du = np.mod(u, period) - period / 2
    dv = np.mod(v, period) - period / 2
    return np.where(du * du + dv * dv < (0.3 * period) ** 2, 1.0, -1.0).astype(np.float32)


class _Canvas:
    """One image being painted: float RGB plus the label maps."""

    def __init__(self, size: int):
        self.size = size
        self.rgb = np.zeros((size, size, 3), np.float32)
        self.masks = {cat: np.zeros((size, size), np.uint8) for cat in PIXEL_CATEGORIES}

    def paint(self, rng, where: np.ndarray, color: str, shift, texture: str, pattern: np.ndarray | None,
              material: str | None = None, shape: str | None = None, parts: dict[str, np.ndarray] | None = None):
        jitter = rng.uniform(-(SHADE_MAX - 14), SHADE_MAX - 14, size=3)
        shade = np.clip(np.asarray(shift, np.float32) + jitter, -SHADE_MAX, SHADE_MAX)
        value = _RGB[color] + shade
        if pattern is None:
            self.rgb[where] = value
        else:
            self.rgb[where] = value + TEXTURE_AMP * pattern[where][:, None]
        m = self.masks
        m["color"][where] = _C[color]
        m["texture"][where] = _T[texture]
        m["material"][where] = _M[material] if material else 0
        m["object"][where] = _S[shape] if shape else 0
        m["part"][where] = 0
        for part, pm in (parts or {}).items():
            m["part"][pm] = _P[part]


def _shape_masks(shape: str, size: int, cx: float, cy: float, r: float, theta: float):
    """Boolean mask of a shape and of its parts."""
    ys, xs = _grid(size)
    dx, dy = xs - cx, ys - cy
    c, s = math.cos(theta), math.sin(theta)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    parts: dict[str, np.ndarray] = {}
    if shape == "disk":
        mask = u * u + v * v <= (0.9 * r) ** 2
    elif shape == "square":
        mask = np.maximum(np.abs(u), np.abs(v)) <= 0.78 * r
    elif shape == "ring":
        d2 = u * u + v * v
        mask = (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    elif shape == "triangle":
        # regular triangle with circumradius r, apex at v = -r (pointing "up" in its own frame)
        h = 0.5 * r
        mask = (v <= h) & (0.866 * u - 0.5 * v <= h) & (-0.866 * u - 0.5 * v <= h)
        apex = mask & (v < -0.35 * r)
        parts = {"triangle_apex": apex, "triangle_base": mask & ~apex}
    elif shape == "cross":
        w = 0.34 * r
        au, av = np.abs(u), np.abs(v)
        mask = ((au <= w) & (av <= r)) | ((av <= w) & (au <= r))
        centre = (au <= w) & (av <= w)
        parts = {"cross_arm": mask & ~centre, "cross_centre": centre}
    elif shape == "star":
        r_in = 0.45 * r
        rho = np.sqrt(u * u + v * v)
        phi = np.arctan2(u, -v)  # 0 at the top tip
        step = 2 * math.pi / 5
        alpha = np.abs(np.mod(phi + step / 2, step) - step / 2)
        # point (rho cos a, rho sin a) inside the edge from tip (r, 0) to inner vertex (r_in cos(step/2), r_in sin(step/2))
        px, py = r_in * math.cos(step / 2), r_in * math.sin(step / 2)
        qx, qy = rho * np.cos(alpha), rho * np.sin(alpha)
        # the origin gives cross = py * r > 0, so inside means cross >= 0
        mask = ((px - r) * qy - py * (qx - r)) >= 0
        core = mask & (rho <= r_in)
        parts = {"star_tip": mask & ~core, "star_core": core}
    else:  # pragma: no cover
        raise ParamError("shape", f"unknown shape {shape!r}")
    return mask, parts


def _paint_background(cv: "_Canvas", rng: np.random.Generator, style: dict, size: int) -> None:
    """Sky, then the scene's band (buildings, trees, mountains or flat) and the ground."""
    ys, xs = _grid(size)
    x = xs[0]

    # --- layout: horizon (top of ground) and band top, per column
    horizon = np.clip(rng.normal(*style["horizon"]), 0.2, 0.85) * size
    amp = rng.uniform(*style["wave"]) * size
    freq = rng.uniform(0.5, 2.0)
    tilt = rng.uniform(-0.06, 0.06) * size
    ground_top = horizon + amp * np.sin(2 * math.pi * freq * x / size + rng.uniform(0, 2 * math.pi)) \
        + tilt * (x / size - 0.5)
    # sky
    sky_color = _choice(rng, style["sky"])
    cv.paint(rng, np.ones((size, size), bool), sky_color, style["sky_shift"], "plain", None, material="sky")
    # band
    if rng.random() < style["band_p"]:
        t = rng.uniform(*style["band_t"]) * size
        kind = style["band_kind"]
        tex = _choice(rng, style["band_textures"])
        if kind == "buildings":
            edges = [0.0]
            while edges[-1] < size:
                edges.append(edges[-1] + rng.uniform(0.08, 0.22) * size)
            for left, right in zip(edges[:-1], edges[1:]):
                top = ground_top - t * rng.uniform(0.5, 1.4)
                where = (ys >= top[None, :]) & (ys < ground_top[None, :]) & (xs >= left) & (xs < right)
                color = _pick(rng, style["band_colors"])
                pattern = _pattern(rng, tex, size, (0.04, 0.08), (0.0, 0.0))
                cv.paint(rng, where, color, (0, 0, 0), tex, pattern, material=style["band_material"])
        else:
            if kind == "trees":
                bumps = np.abs(np.sin(2 * math.pi * rng.uniform(3, 6) * x / size + rng.uniform(0, 6.3)))
                top = ground_top - t * (0.6 + 0.6 * bumps)
            elif kind == "mountains":
                period = rng.uniform(0.3, 0.7) * size
                tri = np.abs(np.mod(x + rng.uniform(0, period), period) / period - 0.5) * 2
                top = ground_top - t * (0.3 + 1.0 * (1 - tri))
            else:
                top = ground_top - t
            where = (ys >= top[None, :]) & (ys < ground_top[None, :])
            pattern = _pattern(rng, tex, size, style["period"], (0.0, 10.0))
            cv.paint(rng, where, style["band_colors"][0], (0, 0, 0), tex, pattern, material=style["band_material"])
    # ground
    tex = _choice(rng, style["ground_textures"])
    pattern = _pattern(rng, tex, size, style["period"], style["angle"])
    cv.paint(rng, ys >= ground_top[None, :], style["ground"], style["ground_shift"], tex, pattern,
             material=style["ground_material"])


def _paint_objects(cv: "_Canvas", rng: np.random.Generator, obj_spec: dict, size: int, cfg: WorldConfig) -> None:
    """1-3 objects with colours, textures and parts (later ones occlude earlier ones in pixels and masks)."""
    n_obj = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    for _ in range(n_obj):
        shape = _pick(rng, obj_spec["shapes"]) if rng.random() < 0.5 else _pick(rng, SHAPES)
        color = _pick(rng, obj_spec["colors"]) if rng.random() < 0.5 else _pick(rng, OBJECT_COLORS)
        r = max(3.0, rng.uniform(0.09, 0.2) * size)
        cx, cy = rng.uniform(0.7 * r, size - 0.7 * r), rng.uniform(0.7 * r, size - 0.7 * r)
        theta = rng.normal(0, 0.25) if shape in ("triangle", "star") else rng.uniform(0, math.pi / 2)
        mask, parts = _shape_masks(shape, size, cx, cy, r, theta)
        tex = _choice(rng, _OBJECT_TEXTURES)
        pattern = _pattern(rng, tex, size, (0.05, 0.09), (0.0, 90.0))
        cv.paint(rng, mask, color, (0, 0, 0), tex, pattern, shape=shape, parts=parts)


def _render(size: int, scene: str, rng: np.random.Generator, cfg: WorldConfig):
    """Paint one image of `scene`; return (uint8 image, uint8 masks, dominant background texture id)."""
    style = _SPECS[_PARTNER[scene]] if rng.random() < cfg.mix else _SPECS[scene]
    cv = _Canvas(size)
    _paint_background(cv, rng, style, size)
    background_texture = cv.masks["texture"].copy()
    surface = cv.masks["material"] != _M["sky"]
    _paint_objects(cv, rng, _SPECS[scene], size, cfg)
    noise = rng.integers(-NOISE_AMP, NOISE_AMP + 1, size=(size, size, 3)).astype(np.float32)
    img = np.clip(np.rint(cv.rgb + noise), 0, 255).astype(np.uint8)
    # image-level texture: the most frequent texture of the visible ground and band (sky excluded)
    visible = cv.masks["object"] == 0
    for sel in (visible & surface, visible, np.ones_like(visible)):
        if sel.any():
            break
    counts = np.bincount(background_texture[sel], minlength=len(TEXTURES) + 1)
    counts[0] = 0
    return img, cv.masks, int(counts.argmax())


def _labels_for(seed: int, split_code: int, n: int) -> np.ndarray:
    """Balanced labels: each block of 10 indices holds every scene once, in a seeded order."""
    k = len(SCENES)
    out = np.empty(n, np.int64)
    for block in range((n + k - 1) // k):
        perm = np.random.default_rng([seed, split_code, block, 7]).permutation(k)
        chunk = out[block * k:(block + 1) * k]
        chunk[:] = perm[:len(chunk)]
    return out


def render_sample(cfg: WorldConfig, split: str, index: int):
    """Render sample `index` of a split: (uint8 image HxWx3, label, {category: uint8 mask}, image texture id)."""
    code = SPLITS[_check_split(split)]
    label = int(_labels_for(cfg.seed, code, index + 1)[index])
    rng = np.random.default_rng([cfg.seed, code, index])
    img, masks, tex = _render(cfg.image_size, SCENES[label], rng, cfg)
    return img, label, masks, tex


# ----------------------------------------------------------------------------- splits and cache

@dataclass
class WorldSplit:
    """A generated split.

    images (N,H,W,3) uint8 RGB; labels (N,) int64 class index into `class_names` (== SCENES);
    masks {category: (N,H,W) int16} for `PIXEL_CATEGORIES` (empty when loaded without masks);
    image_labels {'scene', 'texture': (N,) int16} in the `vocabulary()` id space: 'scene' is
    labels + 1, 'texture' the most frequent texture among the visible ground and band pixels (the
    background without sky and objects).
    """

    images: np.ndarray
    labels: np.ndarray
    masks: dict[str, np.ndarray]
    image_labels: dict[str, np.ndarray]
    class_names: list[str]
    split: str = "train"
    config: WorldConfig = field(default_factory=WorldConfig)

    def __len__(self) -> int:
        return len(self.labels)


def fingerprint(cfg: WorldConfig) -> dict:
    """What identifies a world in cache keys: its configuration plus the renderer version."""
    return {**asdict(cfg), "world_version": WORLD_VERSION}


def _split_key(cfg: WorldConfig, split: str) -> str:
    return cache_key(world_version=WORLD_VERSION, seed=cfg.seed, image_size=cfg.image_size, n=cfg.size(split),
                     split=split, min_objects=cfg.min_objects, max_objects=cfg.max_objects, mix=cfg.mix)


def cache_path(cfg: WorldConfig, split: str) -> Path:
    """Where `generate` caches a split."""
    return cache_dir("world") / f"{split}-{cfg.image_size}px-{_split_key(cfg, split)}.npz"


def _read(path: Path, cfg: WorldConfig, split: str, with_masks: bool) -> WorldSplit:
    """A cached split; raises when the file is damaged or does not hold this configuration's split."""
    with np.load(path, allow_pickle=False) as z:
        images = z["images"]
        labels = z["labels"].astype(np.int64)
        image_labels = {c: z[f"image_{c}"].astype(np.int16) for c in IMAGE_CATEGORIES}
        masks = {c: z[f"mask_{c}"].astype(np.int16) for c in PIXEL_CATEGORIES} if with_masks else {}
    n, s = cfg.size(split), cfg.image_size
    if images.shape != (n, s, s, 3) or labels.shape != (n,):
        raise ValueError(f"holds images of shape {images.shape}, expected {(n, s, s, 3)}")
    return WorldSplit(images, labels, masks, image_labels, list(SCENES), split, cfg)


def _write(split: WorldSplit, path: Path) -> None:
    atomic_savez(path, images=split.images, labels=split.labels,
                 **{f"image_{c}": v for c, v in split.image_labels.items()},
                 **{f"mask_{c}": v for c, v in split.masks.items()})


def _render_split(cfg: WorldConfig, split: str, progress: bool) -> WorldSplit:
    n, s = cfg.size(split), cfg.image_size
    code = SPLITS[split]
    labels = _labels_for(cfg.seed, code, n)
    images = np.zeros((n, s, s, 3), np.uint8)
    masks = {c: np.zeros((n, s, s), np.uint8) for c in PIXEL_CATEGORIES}
    tex = np.zeros(n, np.int16)
    for i in tqdm(range(n), desc=f"world {split}", disable=not progress, leave=False):
        rng = np.random.default_rng([cfg.seed, code, i])
        img, m, t = _render(s, SCENES[labels[i]], rng, cfg)
        images[i] = img
        for c in PIXEL_CATEGORIES:
            masks[c][i] = m[c]
        tex[i] = t
    image_labels = {"scene": (labels + 1).astype(np.int16), "texture": tex}
    return WorldSplit(images, labels, masks, image_labels, list(SCENES), split, cfg)


def generate(cfg: WorldConfig | None = None, split: str = "train", progress: bool = True,
             with_masks: bool = True) -> WorldSplit:
    """Generate (or load from the cache) one split of the world.

    Cached as .npz under ``cache_dir("world")`` keyed by the configuration and split
    (`netanatomy.cache.cached`: written atomically, a damaged file set aside and rendered again).
    ``with_masks=False`` skips loading the masks.
    """
    cfg = WorldConfig() if cfg is None else cfg
    if not isinstance(cfg, WorldConfig):
        raise ParamError("world", f"expected a WorldConfig, got {type(cfg).__name__}")
    _check_split(split)
    out = cached(cache_path(cfg, split), lambda _checkpoint: _render_split(cfg, split, progress),
                 read_file=lambda path: _read(path, cfg, split, with_masks), write_file=_write,
                 label=f"world: render {split} ({cfg.size(split)} images, {cfg.image_size} px)")
    masks = {c: v.astype(np.int16) for c, v in out.masks.items()} if with_masks else {}
    return replace(out, masks=masks)


# ----------------------------------------------------------------------------- torch Dataset

class ConceptWorld(torch.utils.data.Dataset):
    """A split of the concept world as a torch Dataset (ImageFolder-like `classes` and `targets`).

    ``transform=None`` gives a float CHW tensor normalised with `MEAN`/`STD`; a transform given
    receives a PIL RGB image (torchvision transforms work). With ``with_masks=True`` items are
    ``(image, label, {category: int64 HxW tensor})``; masks are never transformed, so pair them
    only with non-geometric transforms (or none).
    """

    def __init__(self, split: str = "train", config: WorldConfig | None = None,
                 transform: Callable | None = None, with_masks: bool = False, progress: bool = True):
        self.config = WorldConfig() if config is None else config
        self.split = _check_split(split)
        self.transform = transform
        self.with_masks = bool(with_masks)
        self.data = generate(self.config, split, progress=progress, with_masks=self.with_masks)
        self.images = self.data.images
        self.labels = self.data.labels
        self.classes = list(SCENES)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.targets = self.labels.tolist()
        self._mean = torch.tensor(MEAN).view(3, 1, 1)
        self._std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        img = self.images[index]
        if self.transform is None:
            x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255)
            x = (x - self._mean) / self._std
        else:
            x = self.transform(Image.fromarray(img))
        label = int(self.labels[index])
        if not self.with_masks:
            return x, label
        masks = {c: torch.from_numpy(self.data.masks[c][index].astype(np.int64)) for c in PIXEL_CATEGORIES}
        return x, label, masks

    def __repr__(self) -> str:
        return (f"ConceptWorld(split={self.split!r}, n={len(self)}, image_size={self.config.image_size}, "
                f"seed={self.config.seed})")


# ----------------------------------------------------------------------------- ImageFolder export

def export_imagefolder(cfg: WorldConfig | None, root: str | Path, splits=("train", "val"),
                       progress: bool = True) -> Path:
    """Write ``root/<split>/<scene>/<index:06d>.png`` (folder order == class index); return root.

    ``cfg=None`` means the default `WorldConfig`; `index` is the sample's index in the split.
    Each split folder is built whole (`netanatomy.cache.cached_folder`): one exported from the same
    configuration is kept, one exported from another configuration is replaced, and a folder not
    written by netanatomy is left alone (DataError).
    """
    cfg = WorldConfig() if cfg is None else cfg
    root = Path(root)
    for split in (splits,) if isinstance(splits, str) else splits:
        _check_split(split)

        def build(tmp: Path, split=split) -> None:
            data = generate(cfg, split, progress=progress, with_masks=False)
            for name in SCENES:
                (tmp / name).mkdir()
            for i in tqdm(range(len(data)), desc=f"export {split}", disable=not progress, leave=False):
                Image.fromarray(data.images[i]).save(tmp / SCENES[data.labels[i]] / f"{i:06d}.png", compress_level=1)

        cached_folder(root / split, _split_key(cfg, split), build)
    return root
