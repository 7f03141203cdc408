"""The Broden data format (Bau et al. 2017): read real Broden sets and export the concept world as one.

Layout of a Broden folder ``root``::

    index.csv       image,split,ih,iw,sh,sw,<category columns...>
    label.csv       number,name,category,frequency,coverage,syns   (category like "material(36);object(3)")
    category.csv    name,first,last,count,frequency
    c_<cat>.csv     code,number,name,frequency,coverage
    images/...      images and segmentation PNGs (paths in index.csv are relative to images/)

A category cell of index.csv is empty or a ``;``-separated list whose items are PNG paths (pixel
labels; a category may have several layers such as ``x_part_1.png;x_part_2.png``) or integers
(whole-image labels such as scene and texture). A segmentation PNG is stored at the
segmentation size ``sh x sw`` (half the image size: 112 for 224, 113 for 227) and encodes the
label number of each pixel as ``R + 256 * G`` (0 = unlabeled). Label numbers are global over
all categories; each label's *primary* category is the one in which its coverage is largest.

`BrodenDataset` reads real Broden (broden1_224, broden1_227) and the exported concept world
through the same code. `write_broden` writes arrays in this layout; `export_world` writes the
concept world in it (cached): object, part, colour and material as pixel maps, scene and
(dominant background) texture as whole-image labels.
The world's label numbers are laid out in blocks of 100 per category (colour 1-13, object
101-106, part 201-206, material 301-309, scene 401-410, texture 501-505) so material PNGs
exercise the G channel (ids above 255).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .cache import cached_folder
from .errors import DataError, ParamError
from .runtime import atomic_write_json, cache_key, resolve_path
from .world import WorldConfig, fingerprint as world_fingerprint, generate, vocabulary

#: Broden's category order (the order of the columns of index.csv and of tally.csv).
BRODEN_CATEGORIES = ("color", "object", "part", "material", "scene", "texture")
INDEX_FIELDS = ("image", "split", "ih", "iw", "sh", "sw")
LABEL_FIELDS = ("number", "name", "category", "frequency", "coverage", "syns")
CATEGORY_FIELDS = ("name", "first", "last", "count", "frequency")
CODE_FIELDS = ("code", "number", "name", "frequency", "coverage")

#: How the concept world maps onto Broden: category -> (first label number, pixel map?, name suffix).
WORLD_LAYOUT = {
    "color": (1, True, "-c"),
    "object": (101, True, ""),
    "part": (201, True, ""),
    "material": (301, True, ""),
    "scene": (401, False, "-s"),
    "texture": (501, False, ""),
}
#: What a folder holds (source, split, world), written last by `write_broden` when given.
MARKER = ".netanatomy_broden.json"
#: 2: world exports are built through `netanatomy.cache.cached_folder` (which marks them itself).
BRODEN_VERSION = 2


# ----------------------------------------------------------------------------- label PNG codec

def encode_labels(labels: np.ndarray) -> np.ndarray:
    """An (H, W) array of label numbers (0..65535) as an (H, W, 3) uint8 image: R = n % 256, G = n // 256."""
    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 65535:
        raise ParamError("labels", "label numbers must lie in 0..65535 to be stored as R + 256 * G")
    lab = labels.astype(np.int64)
    out = np.zeros(lab.shape + (3,), np.uint8)
    out[..., 0] = lab % 256
    out[..., 1] = lab // 256
    return out


def decode_labels(rgb: np.ndarray) -> np.ndarray:
    """Label numbers ``R + 256 * G`` of an (H, W, 3) segmentation image (int64)."""
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:  # a greyscale PNG holds R only
        return rgb.astype(np.int64)
    return rgb[..., 0].astype(np.int64) + 256 * rgb[..., 1].astype(np.int64)


def seg_size(image_size: int) -> int:
    """Broden's segmentation size for an image size: half, rounded down (112 for 224, 113 for 227)."""
    return int(image_size) // 2


def _downsample_nearest(mask: np.ndarray, sh: int, sw: int) -> np.ndarray:
    """Nearest-neighbour resampling at pixel centres of an (..., H, W) label map to (..., sh, sw)."""
    h, w = mask.shape[-2:]
    ys = np.minimum(((np.arange(sh) + 0.5) * h / sh).astype(int), h - 1)
    xs = np.minimum(((np.arange(sw) + 0.5) * w / sw).astype(int), w - 1)
    return mask[..., ys[:, None], xs[None, :]]


# ----------------------------------------------------------------------------- writer (concept world)

def _world_labels() -> dict[str, list[tuple[int, str]]]:
    vocab = vocabulary()
    out = {}
    for cat, (first, _pixel, suffix) in WORLD_LAYOUT.items():
        out[cat] = [(first + i - 1, name + suffix) for i, name in enumerate(vocab[cat]) if i > 0]
    return out


def world_key(world_cfg: WorldConfig, split: str) -> str:
    """What identifies an export of the world `world_cfg`'s `split` (format version, world, layout)."""
    return cache_key(broden_version=BRODEN_VERSION, world=world_fingerprint(world_cfg), split=split,
                     layout={k: list(v) for k, v in WORLD_LAYOUT.items()})


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def write_broden(root: str | Path, images: np.ndarray, labels: dict[str, list[tuple[int, str]]],
                 pixel_maps: dict[str, np.ndarray] | None = None, image_labels: dict[str, np.ndarray] | None = None,
                 split: str = "val", seg_shape: tuple[int, int] | None = None, marker: dict | None = None,
                 prefix: str = "data", progress: bool = True) -> Path:
    """Write a Broden folder at `root` (which must not exist or be empty) from arrays; return `root`.

    `images` (N, H, W, 3) uint8; `labels` {category: [(number, name), ...]} in category order;
    `pixel_maps` {category: (N, h, w) label numbers} resampled (nearest) to `seg_shape`
    (default half the image size); `image_labels` {category: (N,) label numbers, 0 = none}.
    Label statistics (frequency = images holding the label, coverage = summed pixel fraction, a
    whole-image label counting 1) are computed from the data. Written in a temporary folder and
    renamed into place; `marker` (a dict) is written last, describing the content.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise DataError(root, "exists and is not empty", expected="a new or empty folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp-"))
    try:
        _write_files(tmp, images, labels, pixel_maps, image_labels, split, seg_shape, marker, prefix, progress)
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _write_files(folder: Path, images, labels, pixel_maps, image_labels, split, seg_shape, marker, prefix,
                 progress) -> None:
    """`write_broden`'s files, written into the existing empty `folder`."""
    pixel_maps, image_labels = dict(pixel_maps or {}), dict(image_labels or {})
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ParamError("images", f"need (N, H, W, 3) uint8 images, got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise ParamError("images", "no images to write")
    sh, sw = seg_shape or (seg_size(images.shape[1]), seg_size(images.shape[2]))
    for cat in list(pixel_maps) + list(image_labels):
        if cat not in labels:
            raise ParamError("labels", f"category {cat!r} has data but no label list")
    known = {num for labs in labels.values() for num, _ in labs}
    small = {cat: _downsample_nearest(np.asarray(m), sh, sw).astype(np.int64) for cat, m in pixel_maps.items()}
    for cat, m in small.items():
        bad = set(np.unique(m).tolist()) - known - {0}
        if bad:
            raise ParamError("pixel_maps", f"category {cat!r} holds label number(s) {sorted(bad)[:5]} "
                                           f"that are not in `labels`")
    for cat, lab in image_labels.items():
        bad = set(np.unique(np.asarray(lab)).tolist()) - known - {0}
        if bad:
            raise ParamError("image_labels", f"category {cat!r} holds label number(s) {sorted(bad)[:5]} "
                                             f"that are not in `labels`")
    (folder / "images" / prefix).mkdir(parents=True)
    freq, cover, cat_freq = _write_images(folder, images, list(labels), small, image_labels, (sh, sw), split,
                                          prefix, progress)
    _write_label_tables(folder, labels, freq, cover, cat_freq)
    if marker is not None:
        atomic_write_json(folder / MARKER, marker)


def _write_images(folder: Path, images: np.ndarray, cats: list[str], small: dict, image_labels: dict,
                  seg_shape: tuple[int, int], split: str, prefix: str, progress: bool) -> tuple[dict, dict, dict]:
    """Images, segmentation PNGs and index.csv; returns per-label (frequency, coverage) and per-category frequency."""
    n, ih, iw = images.shape[:3]
    sh, sw = seg_shape
    freq: dict[int, int] = {}
    cover: dict[int, float] = {}
    cat_freq = {cat: 0 for cat in cats}
    rows = []
    for i in tqdm(range(n), desc="write Broden", disable=not progress, leave=False):
        name = f"{prefix}/{split}_{i:06d}"
        Image.fromarray(images[i]).save(folder / "images" / f"{name}.png", compress_level=1)
        row = {"image": f"{name}.png", "split": split, "ih": ih, "iw": iw, "sh": sh, "sw": sw}
        for cat in cats:
            row[cat] = ""
            if cat in small and small[cat][i].any():
                number = small[cat][i]
                Image.fromarray(encode_labels(number)).save(folder / "images" / f"{name}_{cat}.png",
                                                            compress_level=1)
                row[cat] = f"{name}_{cat}.png"
                ids, counts = np.unique(number[number > 0], return_counts=True)
                for lab, cnt in zip(ids.tolist(), counts.tolist()):
                    freq[lab] = freq.get(lab, 0) + 1
                    cover[lab] = cover.get(lab, 0.0) + cnt / (sh * sw)
            lab = int(image_labels[cat][i]) if cat in image_labels else 0
            if lab > 0:
                row[cat] = ";".join(filter(None, [row[cat], str(lab)]))
                freq[lab] = freq.get(lab, 0) + 1
                cover[lab] = cover.get(lab, 0.0) + 1.0
            cat_freq[cat] += bool(row[cat])
        rows.append(row)
    pd.DataFrame(rows, columns=list(INDEX_FIELDS) + cats).to_csv(folder / "index.csv", index=False)
    return freq, cover, cat_freq


def _write_label_tables(folder: Path, labels: dict[str, list[tuple[int, str]]], freq: dict, cover: dict,
                        cat_freq: dict) -> None:
    """label.csv, c_<cat>.csv and category.csv from the label lists and their statistics."""
    label_rows, cat_rows = [], []
    for cat, labs in labels.items():
        code_rows = []
        for code, (number, lname) in enumerate(labs, start=1):
            f, c = freq.get(number, 0), round(cover.get(number, 0.0), 4)
            label_rows.append({"number": number, "name": lname, "category": f"{cat}({code})",
                               "frequency": f, "coverage": c, "syns": ""})
            code_rows.append({"code": code, "number": number, "name": lname, "frequency": f, "coverage": c})
        pd.DataFrame(code_rows, columns=CODE_FIELDS).to_csv(folder / f"c_{cat}.csv", index=False)
        numbers = [num for num, _ in labs]
        cat_rows.append({"name": cat, "first": min(numbers) if numbers else 0,
                         "last": max(numbers) if numbers else 0, "count": len(labs), "frequency": cat_freq[cat]})
    label_df = pd.DataFrame(label_rows, columns=LABEL_FIELDS).sort_values("number", kind="stable")
    label_df.to_csv(folder / "label.csv", index=False)
    pd.DataFrame(cat_rows, columns=CATEGORY_FIELDS).to_csv(folder / "category.csv", index=False)


def export_world(world_cfg: WorldConfig | None = None, root: str | Path = "broden_world", split: str = "val",
                 progress: bool = True) -> Path:
    """Write one split of the concept world as a Broden folder at `root`; return `root`.

    Idempotent and cached (`netanatomy.cache.cached_folder`): a `root` that already holds an
    export of the same configuration and split is returned untouched; an export of another
    configuration is replaced; a non-empty folder not written by netanatomy is refused
    (DataError). The export is built beside `root` and renamed into place, so it is complete or
    absent. Object, part, colour and material are pixel maps at half the image size; scene and
    the dominant background texture are whole-image labels (`WORLD_LAYOUT` gives the numbers).
    """
    world_cfg = WorldConfig() if world_cfg is None else world_cfg
    if not isinstance(world_cfg, WorldConfig):
        raise ParamError("world", f"expected a WorldConfig, got {type(world_cfg).__name__}")
    root = Path(root)
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()  # an empty folder is as good as none

    def build(folder: Path) -> None:
        data = generate(world_cfg, split, progress=progress, with_masks=True)
        if len(data) == 0:
            raise ParamError("split", f"the world's {split!r} split is empty (n_{split}=0)")
        pixel_maps, image_labels = {}, {}
        for cat, (first, pixel, _suffix) in WORLD_LAYOUT.items():
            local = (data.masks[cat] if pixel else data.image_labels[cat]).astype(np.int64)
            (pixel_maps if pixel else image_labels)[cat] = np.where(local > 0, local + first - 1, 0)
        marker = {"source": "concept_world", "split": split, "n": len(data), "world": dataclasses.asdict(world_cfg),
                  "normalize": "world"}
        _write_files(folder, data.images, _world_labels(), pixel_maps, image_labels, split, None, marker, "world",
                     progress)

    return cached_folder(root, world_key(world_cfg, split), build)


def is_world_export(root: str | Path) -> bool:
    """True when `root` is a concept-world export written by `export_world`."""
    marker = _read_marker(Path(root))
    return bool(marker and marker.get("source") == "concept_world")


# ----------------------------------------------------------------------------- reader

_CAT_ITEM = re.compile(r"^\s*([^()]+?)\s*\((\d+)\)\s*$")


def _parse_label_categories(text: str, path: Path, row: int) -> dict[str, int]:
    """'material(36);object(3)' -> {'material': 36, 'object': 3} (a bare name counts 1)."""
    out: dict[str, int] = {}
    for item in filter(None, (t.strip() for t in str(text).split(";"))):
        m = _CAT_ITEM.match(item)
        if m:
            out[m.group(1)] = int(m.group(2))
        elif re.fullmatch(r"[\w\- ]+", item):
            out[item] = out.get(item, 0) + 1
        else:
            raise DataError(path, f"row {row}: category field {text!r} is malformed",
                            expected="items like 'material(36);object(3)'")
    return out


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(path, "file not found", expected=f"a CSV with columns {','.join(required)}")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        missing = [c for c in required if c not in fields]
        if missing:
            raise DataError(path, f"header lacks column(s) {', '.join(missing)} (has {','.join(fields)})",
                            expected=f"columns {','.join(required)}")
        rows = []
        for r, row in enumerate(reader, start=2):
            if None in row or any(v is None for v in row.values()):
                raise DataError(path, f"row {r}: has {len(fields) + len(row.get(None) or [])} fields "
                                      f"where the header has {len(fields)}"
                                      if None in row else f"row {r}: has fewer fields than the header",
                                expected=f"{len(fields)} comma-separated fields")
            rows.append(row)
    return rows


def _int(value: str, path: Path, row: int, column: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise DataError(path, f"row {row}, column {column!r}: {value!r} is not an integer") from None


@dataclasses.dataclass
class IndexRow:
    """One image of index.csv: paths relative to images/, sizes, pixel layers and whole-image labels."""

    row: int
    image: str
    split: str
    ih: int
    iw: int
    sh: int
    sw: int
    pixels: dict[str, list[str]]
    scalars: dict[str, list[int]]


class BrodenDataset(torch.utils.data.Dataset):
    """A Broden folder: labels, categories and images with their segmentations.

    ``categories`` restricts the categories used (default: all of category.csv that index.csv
    has); ``split`` keeps rows of one split (default: all rows, as Network Dissection does).
    Labels are re-indexed compactly: ``labels`` (DataFrame with number, name, category =
    primary category, frequency, coverage) row ``j`` is label index ``j + 1``; 0 is unlabeled.

    An item is ``(image uint8 (ih, iw, 3), seg int64 (L, sh, sw) of label indices, scalars int64
    (S,) of label indices, index)``; `collate` batches items of one segmentation size.
    """

    def __init__(self, root: str | Path, categories: Sequence[str] | None = None, split: str | None = None):
        self.root = resolve_path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "Broden folder not found",
                            expected="a folder holding index.csv, label.csv, category.csv and images/")
        for name in ("index.csv", "label.csv", "category.csv"):
            if not (self.root / name).is_file():
                raise DataError(self.root / name, "file not found (is this a Broden folder?)",
                                expected="a Broden folder holding index.csv, label.csv, category.csv and images/")
        self._read_categories()
        self._read_labels()
        self._read_index(categories, split)

    # -- metadata
    def _read_categories(self) -> None:
        path = self.root / "category.csv"
        rows = _read_csv(path, ("name",))
        self.all_category_names = [r["name"].strip() for r in rows]
        if not self.all_category_names:
            raise DataError(path, "lists no categories")

    def _read_labels(self) -> None:
        path = self.root / "label.csv"
        rows = _read_csv(path, ("number", "name", "category"))
        records = []
        for r, row in enumerate(rows, start=2):
            number = _int(row["number"], path, r, "number")
            if number == 0:  # some label.csv files list the unlabeled id 0 ('-'); it is not a concept
                continue
            if number < 0:
                raise DataError(path, f"row {r}: label number {number} is negative")
            cats = _parse_label_categories(row["category"], path, r)
            unknown = [c for c in cats if c not in self.all_category_names]
            if unknown:
                raise DataError(path, f"row {r}: label {row['name']!r} names unknown category "
                                      f"{unknown[0]!r}", expected=f"one of {', '.join(self.all_category_names)}")
            coverage = self._coverages(row["name"], number, cats)
            primary = max(cats, key=lambda c: (coverage.get(c, 0.0), cats[c])) if cats else None
            if primary is None:
                raise DataError(path, f"row {r}: label {row['name']!r} has no category")
            records.append({"number": number, "name": row["name"].strip(), "category": primary,
                            "categories": row["category"],
                            "frequency": float(row.get("frequency") or 0),
                            "coverage": float(row.get("coverage") or 0)})
        if not records:
            raise DataError(path, "lists no labels")
        df = pd.DataFrame(records)
        dup = df["number"][df["number"].duplicated()]
        if len(dup):
            raise DataError(path, f"label number {int(dup.iloc[0])} appears twice")
        self.all_labels = df.sort_values("number").reset_index(drop=True)

    _coverage_cache: dict | None = None

    def _coverages(self, name: str, number: int, cats: dict[str, int]) -> dict[str, float]:
        """Coverage of label `number` in each of its categories, from c_<cat>.csv when present.

        The primary category is the one where the coverage is largest; without c_*.csv files the
        per-category counts of label.csv's category field decide.
        """
        if self._coverage_cache is None:
            self._coverage_cache = {}
            for cat in self.all_category_names:
                path = self.root / f"c_{cat}.csv"
                if path.is_file():
                    for r, row in enumerate(_read_csv(path, ("number",)), start=2):
                        num = _int(row["number"], path, r, "number")
                        try:
                            cov = float(row.get("coverage") or 0)
                        except ValueError:
                            raise DataError(path, f"row {r}: coverage {row.get('coverage')!r} is not a number") \
                                from None
                        self._coverage_cache[(cat, num)] = cov
        return {c: self._coverage_cache.get((c, number), float(n)) for c, n in cats.items()}

    def _read_index(self, categories: Sequence[str] | None, split: str | None) -> None:
        path = self.root / "index.csv"
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise DataError(path, "is empty", expected="a header image,split,ih,iw,sh,sw,<categories>") from None
            if tuple(header[:6]) != INDEX_FIELDS:
                raise DataError(path, f"header starts {','.join(header[:6])!r}",
                                expected="image,split,ih,iw,sh,sw,<category columns>")
            self.category_names = self._choose_categories(header[6:], categories)
            rows = [row for r, fields in enumerate(reader, start=2)
                    if (row := self._parse_row(path, r, header, fields, split)) is not None]
        if not rows:
            what = f"no rows of split {split!r}" if split is not None else "no image rows"
            raise DataError(path, f"has {what}", expected="at least one image")
        self.rows = rows
        self._index_labels()
        sizes = {(r.sh, r.sw) for r in rows}
        self.seg_shape = sorted(sizes)[0] if len(sizes) == 1 else None

    def _choose_categories(self, columns: list[str], categories: Sequence[str] | None) -> list[str]:
        """The categories to use: `categories` (checked against index.csv's columns) or all of them."""
        unknown = [c for c in columns if c not in self.all_category_names]
        if unknown:
            raise DataError(self.root / "index.csv", f"column {unknown[0]!r} is not a category of category.csv",
                            expected=f"columns among {', '.join(self.all_category_names)}")
        if categories is None:
            return [c for c in self.all_category_names if c in columns]
        chosen = list(dict.fromkeys(categories))
        bad = [c for c in chosen if c not in columns]
        if bad:
            raise ParamError("categories", f"{bad[0]!r} is not a category of {self.root}; "
                                           f"available: {', '.join(columns)}")
        if not chosen:
            raise ParamError("categories", "no categories given")
        return chosen

    def _parse_row(self, path: Path, r: int, header: list[str], fields: list[str],
                   split: str | None) -> IndexRow | None:
        """Row `r` of index.csv (None: blank or of another split)."""
        if not fields or all(not f.strip() for f in fields):
            return None
        if len(fields) != len(header):
            raise DataError(path, f"row {r}: has {len(fields)} fields where the header has {len(header)}",
                            expected=f"{len(header)} comma-separated fields")
        rec = dict(zip(header, fields))
        if split is not None and rec["split"] != split:
            return None
        sizes = [_int(rec[k], path, r, k) for k in ("ih", "iw", "sh", "sw")]
        if min(sizes) <= 0:
            raise DataError(path, f"row {r}: sizes ih,iw,sh,sw must be positive, got {sizes}")
        pixels: dict[str, list[str]] = {}
        scalars: dict[str, list[int]] = {}
        for cat in self.category_names:
            for item in filter(None, (t.strip() for t in rec[cat].split(";"))):
                if re.fullmatch(r"-?\d+", item):
                    scalars.setdefault(cat, []).append(int(item))
                elif item.lower().endswith(".png"):
                    pixels.setdefault(cat, []).append(item)
                else:
                    raise DataError(path, f"row {r}, column {cat!r}: item {item!r} is neither a PNG "
                                          f"path nor an integer label")
        return IndexRow(r, rec["image"].strip(), rec["split"], *sizes, pixels, scalars)

    def _index_labels(self) -> None:
        """The compact label space of the chosen categories (by primary category)."""
        chosen = self.category_names
        labels = self.all_labels[self.all_labels["category"].isin(chosen)].reset_index(drop=True)
        self.labels = labels[["number", "name", "category", "frequency", "coverage"]].copy()
        self._number_to_index = np.zeros(int(self.all_labels["number"].max()) + 1, np.int64)
        self._known = np.zeros_like(self._number_to_index, dtype=bool)
        self._known[self.all_labels["number"].to_numpy()] = True
        self._known[0] = True
        self._number_to_index[labels["number"].to_numpy()] = np.arange(1, len(labels) + 1)
        cat_of = labels["category"].map({c: i for i, c in enumerate(chosen)}).to_numpy()
        #: (labels + 1, categories) one-hot of each label index's primary category (row 0 = unlabeled)
        self.labelcat = np.zeros((len(labels) + 1, len(chosen)), np.float32)
        self.labelcat[np.arange(1, len(labels) + 1), cat_of] = 1.0

    # -- sizes
    def __len__(self) -> int:
        return len(self.rows)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def label_index(self, numbers) -> np.ndarray:
        """Compact label indices (1..num_labels; 0 for unlabeled or a label outside the chosen categories)."""
        numbers = np.asarray(numbers, np.int64)
        out = np.zeros(numbers.shape, np.int64)
        ok = (numbers >= 0) & (numbers < len(self._number_to_index))
        out[ok] = self._number_to_index[numbers[ok]]
        return out

    def _check_known(self, numbers: np.ndarray, where: Path, row: int) -> None:
        numbers = np.unique(numbers)
        bad = numbers[(numbers < 0) | (numbers >= len(self._known))]
        if not len(bad):
            bad = numbers[~self._known[numbers]]
        if len(bad):
            raise DataError(where, f"(row {row} of index.csv) holds label number {int(bad[0])}, which "
                                   f"label.csv does not list")

    # -- items
    def image_path(self, i: int) -> Path:
        return self.root / "images" / self.rows[i].image

    def load_image(self, i: int) -> np.ndarray:
        """Image i as uint8 (H, W, 3) RGB."""
        path = self.image_path(i)
        if not path.is_file():
            raise DataError(path, f"image of row {self.rows[i].row} of index.csv not found")
        what = f"image of row {self.rows[i].row} of index.csv"
        with _open_image(path, what) as im:
            return _decoded(path, lambda: np.asarray(im.convert("RGB")), what)

    def load_segmentation(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(seg int64 (L, sh, sw) of compact label indices, scalars int64 (S,) of compact label indices)."""
        r = self.rows[i]
        layers = []
        for cat, items in r.pixels.items():
            for item in items:
                path = self.root / "images" / item
                if not path.is_file():
                    raise DataError(path, f"segmentation of row {r.row} of index.csv (category {cat!r}) not found")
                what = f"segmentation of row {r.row} of index.csv (category {cat!r})"
                with _open_image(path, what) as im:
                    if im.size != (r.sw, r.sh):
                        raise DataError(path, f"(row {r.row} of index.csv) is {im.size[0]}x{im.size[1]}, "
                                              f"index.csv says sw x sh = {r.sw}x{r.sh}")
                    numbers = _decoded(path, lambda: decode_labels(
                        np.asarray(im.convert("RGB") if im.mode not in ("RGB", "L") else im)), what)
                self._check_known(numbers, path, r.row)
                layers.append(self.label_index(numbers))
        seg = np.stack(layers) if layers else np.zeros((0, r.sh, r.sw), np.int64)
        nums = [n for items in r.scalars.values() for n in items]
        if nums:
            self._check_known(np.array(nums), self.root / "index.csv", r.row)
        scal = self.label_index(np.array(nums, np.int64))
        return seg, scal[scal > 0]

    def __getitem__(self, i: int):
        seg, scal = self.load_segmentation(i)
        return self.load_image(i), seg, scal, i

    def __repr__(self) -> str:
        return (f"BrodenDataset(root={str(self.root)!r}, images={len(self)}, labels={self.num_labels}, "
                f"categories={self.category_names})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160]}" if text else type(exc).__name__


def _open_image(path: Path, what: str):
    """``Image.open(path)``, or a DataError naming the file when it is not an image at all."""
    try:
        return Image.open(path)
    except (OSError, ValueError, SyntaxError) as exc:
        reason = "not an image file" if isinstance(exc, UnidentifiedImageError) else _first_line(exc)
        raise DataError(path, f"{what} cannot be read as an image ({reason})", expected="a PNG or JPEG file") from None


def _decoded(path: Path, decode, what: str):
    """`decode()` of an opened image, or a DataError naming the file when it is truncated or damaged."""
    try:
        return decode()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(path, f"{what} is truncated or damaged ({_first_line(exc)})",
                        expected="a complete PNG or JPEG file") from None


def stack_images(images: Sequence[np.ndarray]) -> torch.Tensor | list[torch.Tensor]:
    """uint8 (H, W, 3) images as one (B, H, W, 3) tensor when of one size, else as a list of tensors."""
    if len({im.shape for im in images}) == 1:
        return torch.from_numpy(np.stack(images))
    return [torch.from_numpy(im) for im in images]


def collate(items):
    """Batch Broden items: images stacked when of one size (else a list), segs padded to the most layers."""
    images, segs, scalars, idx = zip(*items)
    imgs = stack_images(images)
    seg_shapes = {s.shape[1:] for s in segs}
    if len(seg_shapes) != 1:
        raise DataError("index.csv", f"a batch mixes segmentation sizes {sorted(seg_shapes)}",
                        expected="one segmentation size (sh, sw) for the whole data set")
    depth = max(1, max(s.shape[0] for s in segs))
    sh, sw = next(iter(seg_shapes))
    seg = np.zeros((len(segs), depth, sh, sw), np.int64)
    for b, s in enumerate(segs):
        seg[b, :s.shape[0]] = s
    width = max(1, max(len(s) for s in scalars))
    scal = np.zeros((len(scalars), width), np.int64)
    for b, s in enumerate(scalars):
        scal[b, :len(s)] = s
    return imgs, torch.from_numpy(seg), torch.from_numpy(scal), torch.tensor(idx)


def open_broden(root: str | Path, categories: Sequence[str] | None = None, split: str | None = None) -> BrodenDataset:
    """`BrodenDataset(root, categories, split)`, with the parameter named `broden_root` in errors."""
    root = resolve_path(root)
    if root is None or not root.is_dir():
        raise ParamError("broden_root", f"{root} is not a folder; give a Broden folder (index.csv, label.csv, "
                                        f"category.csv, images/) such as broden1_224, or leave it empty for the "
                                        f"exported concept world")
    return BrodenDataset(root, categories, split)
