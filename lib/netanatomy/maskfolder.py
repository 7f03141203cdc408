"""A folder of images with concept masks, converted to the Broden layout (`broden.write_broden`), so a
user can dissect a network against their own concepts (`dissection` notebook, ``broden_root``).

Two source layouts (image files: .png, .jpg or .jpeg; masks: PNG of the image's size)::

    per concept                            label images
    src/images/<stem>.jpg                  src/images/<stem>.jpg
    src/masks/<category>/<concept>/        src/labels/<stem>.png   one value per pixel (0: none)
        <stem>.png   nonzero = concept     src/labels.csv          value,name,category

Per concept, an image without a mask file has no pixel of that concept; where two concepts of one
category overlap, the later one in sorted order wins (Broden holds one label per pixel and
category). Label numbers are global, 1.. in category then concept order. Images are resized to
`image_size` (None: all must share the first image's size) and masks with them (nearest).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .broden import write_broden
from .data import open_image, rgb_loader
from .errors import DataError
from .runtime import resolve_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _images(src: Path) -> list[Path]:
    folder = src / "images"
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise DataError(folder, "holds no images", expected="images/<stem>.png or .jpg files")
    return files


def _read(path: Path, size: tuple[int, int] | None, mode: str, resample) -> np.ndarray:
    """An image (`data.rgb_loader`) or a mask in `mode`, resized to `size`; a damaged file is named."""
    im = rgb_loader(path) if mode == "RGB" else open_image(path).convert(mode)
    if size is not None and im.size != size:
        im = im.resize(size, resample)
    return np.asarray(im)


def _concept_maps(src: Path, stems: list[str], size: tuple[int, int]) -> tuple[dict, dict]:
    """Labels and pixel maps of the per-concept layout."""
    labels, maps, number = {}, {}, 0
    for cat_dir in sorted(p for p in (src / "masks").iterdir() if p.is_dir()):
        concepts = sorted(p for p in cat_dir.iterdir() if p.is_dir())
        if not concepts:
            raise DataError(cat_dir, "holds no concept folders", expected="masks/<category>/<concept>/<stem>.png")
        cat_map = np.zeros((len(stems), size[1], size[0]), np.int64)
        labels[cat_dir.name] = []
        for concept in concepts:
            number += 1
            labels[cat_dir.name].append((number, concept.name))
            for i, stem in enumerate(stems):
                mask = concept / f"{stem}.png"
                if mask.is_file():
                    cat_map[i][_read(mask, size, "L", Image.NEAREST) > 0] = number
        maps[cat_dir.name] = cat_map
    if not labels:
        raise DataError(src / "masks", "holds no category folders", expected="masks/<category>/<concept>/<stem>.png")
    return labels, maps


def _label_image_maps(src: Path, stems: list[str], size: tuple[int, int]) -> tuple[dict, dict]:
    """Labels and pixel maps of the label-image layout."""
    table = pd.read_csv(src / "labels.csv")
    missing = {"value", "name", "category"} - set(table.columns)
    if missing:
        raise DataError(src / "labels.csv", f"lacks the column(s) {', '.join(sorted(missing))}",
                        expected="columns value,name,category")
    if not len(table) or (table["value"] < 1).any():
        raise DataError(src / "labels.csv", "needs rows with values >= 1 (0 is unlabelled)", expected="value,name,category")
    table = table.sort_values(["category", "name"], kind="stable").reset_index(drop=True)
    table["number"] = np.arange(1, len(table) + 1)
    values = np.stack([_read(src / "labels" / f"{stem}.png", size, "I", Image.NEAREST).astype(np.int64)
                       for stem in stems])
    labels, maps = {}, {}
    for cat, rows in table.groupby("category", sort=True):
        labels[cat] = list(zip(rows["number"].tolist(), rows["name"].astype(str).tolist()))
        lut = np.zeros(max(int(values.max()), int(table["value"].max())) + 1, np.int64)
        lut[rows["value"].astype(int).to_numpy()] = rows["number"].to_numpy()
        maps[cat] = lut[values]
    return labels, maps


def to_broden(src: str | Path, dst: str | Path, image_size: int | None = None, progress: bool = True) -> Path:
    """Convert the mask folder `src` (either layout) to a Broden folder at `dst` (new or empty); return `dst`."""
    src = resolve_path(src)
    per_concept, label_images = (src / "masks").is_dir(), (src / "labels.csv").is_file()
    if per_concept == label_images:
        raise DataError(src, "needs exactly one of masks/ (one folder per concept) and labels.csv (label images)",
                        expected="images/ with masks/<category>/<concept>/ or labels/ and labels.csv")
    files = _images(src)
    stems = [p.stem for p in files]
    for stem in stems if label_images else ():
        if not (src / "labels" / f"{stem}.png").is_file():
            raise DataError(src / "labels" / f"{stem}.png", "label image missing", expected="one per image")
    size = (image_size, image_size) if image_size is not None else open_image(files[0]).size
    images = [_read(p, size, "RGB", Image.BILINEAR) for p in files]
    odd = next((p for p, im in zip(files, images) if im.shape[:2] != (size[1], size[0])), None)
    if odd is not None:
        raise DataError(odd, f"is not {size[0]} x {size[1]} like the first image", expected="give image_size")
    labels, maps = (_concept_maps if per_concept else _label_image_maps)(src, stems, size)
    return write_broden(dst, np.stack(images), labels, maps, marker={"source": str(src)}, progress=progress)
