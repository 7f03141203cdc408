"""Small data files in the real layouts, for tests that must not need the shared data."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("airplane", "automobile", "bird")


def cifar_jpeg_archive(path: Path, per_class: dict[str, int] | None = None, size: int = 32, seed: int = 0,
                       damaged: str | None = None) -> dict[str, np.ndarray]:
    """Write a tar.gz in the layout of ``cifar10_jpeg.tar.gz`` (``<split>/<class>/NNNN.jpg``).

    Each image is a flat colour whose red channel encodes (class index * 60 + image number * 7),
    so a reader's class order and within-class order can be checked from the pixels. `per_class`
    gives images per split (default train 3, test 2). `damaged` names one member written as a
    truncated JPEG. Returns the expected red value of every image per split, in reading order.
    """
    per_class = per_class or {"train": 3, "test": 2}
    expected: dict[str, list[int]] = {}
    with tarfile.open(path, "w:gz") as tar:
        for split, n in per_class.items():
            for c, name in enumerate(CLASSES):
                for i in range(n):
                    red = c * 60 + i * 7
                    buf = io.BytesIO()
                    Image.fromarray(np.full((size, size, 3), (red, 128, 30), np.uint8)).save(buf, "JPEG", quality=95)
                    member = f"{split}/{name}/{i:04d}.jpg"
                    blob = buf.getvalue()[:40] if member == damaged else buf.getvalue()
                    info = tarfile.TarInfo(member)
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
                    expected.setdefault(split, []).append(red)
    return {split: np.array(v) for split, v in expected.items()}


def cifar_npz(path: Path, n_per_class: int = 2, classes=CLASSES, seed: int = 0) -> Path:
    """Write an .npz in the layout of ``cifar10_test_first1000.npz`` (images uint8 (N, 3, 32, 32), labels, classes)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(classes)), n_per_class)
    images = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    np.savez(path, images=images, labels=labels, labels_all10000=labels, classes=np.array(classes))
    return path
