"""Anatomy test fixtures: a tiny mask folder in both source layouts of `netanatomy.maskfolder`.

`write_mask_folder(root, layout)` writes three 8 x 8 images with two categories: "object" holds
"disk" (rows 0-3 of image 0 and 2) and "box" (rows 0-3, columns 4-7 of image 1), "material" holds "sky"
(rows 4-7 of every image). Masks are 2 x 2-block aligned, so the half-size Broden segmentation keeps
them exactly: `expected_names(i)` gives image i's label names per pixel of the 4 x 4 segmentation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

N, SIZE = 3, 8


def _masks() -> dict[tuple[str, str], np.ndarray]:
    disk, box, sky = (np.zeros((N, SIZE, SIZE), bool) for _ in range(3))
    disk[[0, 2], :4] = True
    box[1, :4, 4:] = True
    sky[:, 4:] = True
    return {("object", "disk"): disk, ("object", "box"): box, ("material", "sky"): sky}


def write_mask_folder(root: Path, layout: str) -> Path:
    """The fixture in layout 'concepts' (masks/<category>/<concept>/) or 'labels' (labels/ + labels.csv)."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(N):
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
    masks = _masks()
    if layout == "concepts":
        for (cat, name), m in masks.items():
            (root / "masks" / cat / name).mkdir(parents=True)
            for i in range(N):
                if m[i].any():
                    Image.fromarray(m[i].astype(np.uint8) * 255).save(root / "masks" / cat / name / f"im{i}.png")
        return root
    # label images cannot hold two categories in one pixel: 'sky' and the objects never overlap here
    (root / "labels").mkdir()
    values = {("object", "disk"): 3, ("object", "box"): 7, ("material", "sky"): 9}
    for i in range(N):
        img = np.zeros((SIZE, SIZE), np.uint8)
        for key, m in masks.items():
            img[m[i]] = values[key]
        Image.fromarray(img).save(root / "labels" / f"im{i}.png")
    rows = ["value,name,category"] + [f"{v},{n},{c}" for (c, n), v in values.items()]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def expected_names(i: int) -> list[list[set[str]]]:
    """Image i's label names per pixel of the 4 x 4 segmentation."""
    half = {key: m[i][::2, ::2] for key, m in _masks().items()}
    return [[{name for (_, name), m in half.items() if m[r, c]} for c in range(SIZE // 2)] for r in range(SIZE // 2)]
