"""Planted features, fixed layers and data files for the tests of `netanatomy.decompose`.

- `planted_features(C, D, block, per_class)`: class c's images have large values exactly on the
  features [c*block, (c+1)*block), in descending order (5, 4, 3, ... plus noise < 0.1), and noise
  < 0.1 elsewhere. So every image's top-`block` features are its class's block, the frequency
  histogram of class c is `per_class` on that block and 0 elsewhere, and S_c = that block (in order).
- `block_linear(C, D, block)`: a linear layer with weight = the indicator of those blocks and bias 0:
  it reads only each class's block, so on planted features it is 100 % correct; noise on the block
  of the true class breaks it, noise elsewhere does not.
- `random_linear(C, D, seed)`: a linear layer with N(0, 1) weight and bias (distinct rows).
- `akamaster_like_checkpoint(path)`: a random ResNet-20 saved as the akamaster files are.
- `cifar10_batches_folder(root, train_per_batch, test)` and `cifar10_npz(path, count)`: tiny
  CIFAR-10 files in the two layouts the notebook reads, with labels i % 10.
- `tiny_imagefolder(root, classes, filled, train, val)`: an ImageFolder tree train/<class>/, val/<class>/
  with `classes` class folders (n00000, n00001, ...: sorted order = class index) of which only the
  first `filled` hold images (`train` and `val` random 48 px PNGs each); so the data set has
  `classes` classes, `filled * train` training and `filled * val` validation images.
- `random_checkpoint(name, classes, path)`: a randomly initialised `models.build(name, classes)` saved
  as a plain state dict (as torchvision's files are).
- `SHARED` paths and `needs(*paths)`: the real files in ../shared/data (tests skip without them).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from netanatomy import models

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
AKAMASTER = SHARED / "weights" / "resnet20-12fca82f.th"
CIFAR_NPZ = SHARED / "cifar10" / "cifar10_test_first1000.npz"
PUBLISHED = SHARED / "decomposition" / "resnet20_cifar-10_indices.json"
PUBLISHED_CSG = SHARED / "decomposition" / "resnet20_cifar-10_csg_indices.json"
CSG_CKPT = SHARED / "decomposition" / "best_save_CSG.pth"
RESNET50_INDICES = SHARED / "decomposition" / "resnet50_imagenet_indices.json"
#: Images of CIFAR-10 test[0:1000] (original pixels) the published checkpoints classify correctly
#: (tests/test_models.py, the phase-3 brief): ResNet-20 915, ResNet-56 926.
CORRECT_OF_1000 = {"resnet20": 915, "resnet56": 926}


def needs(*paths: Path) -> None:
    """Skip the calling test unless every path exists."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"shared real-data files absent: {', '.join(missing)} (see ../shared/data/README.md)")


def planted_features(C: int = 4, D: int = 24, block: int = 3, per_class: int = 30,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (C*per_class, D), labels): class c's mass on features [c*block, (c+1)*block), descending."""
    g = torch.Generator().manual_seed(seed)
    f = 0.1 * torch.rand(C * per_class, D, generator=g)
    labels = torch.arange(C).repeat_interleave(per_class)
    for c in range(C):
        rows = labels == c
        for r, j in enumerate(range(c * block, (c + 1) * block)):
            f[rows, j] = 5.0 - r + 0.1 * torch.rand(int(rows.sum()), generator=g)
    return f, labels


def block_indices(C: int = 4, block: int = 3) -> dict[int, list[int]]:
    """S_c = [c*block, (c+1)*block): the planted answer."""
    return {c: list(range(c * block, (c + 1) * block)) for c in range(C)}


def block_linear(C: int = 4, D: int = 24, block: int = 3) -> nn.Linear:
    """z_c = sum of the features in class c's block (weight 1 there, 0 elsewhere; bias 0)."""
    lin = nn.Linear(D, C)
    weight = torch.zeros(C, D)
    for c, js in block_indices(C, block).items():
        weight[c, js] = 1.0
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.zero_()
    return lin


def random_linear(C: int = 5, D: int = 12, seed: int = 0) -> nn.Linear:
    """A C x D linear layer with N(0, 1) weight and bias drawn from `seed`."""
    torch.manual_seed(seed)
    lin = nn.Linear(D, C)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(C, D))
        lin.bias.copy_(torch.randn(C))
    return lin


def akamaster_like_checkpoint(path: Path) -> Path:
    """A random ResNet-20 saved like the akamaster files: `module.` prefixes, no num_batches_tracked."""
    state = {f"module.{k}": v for k, v in models.build("resnet20", 10).state_dict().items()
             if not k.endswith("num_batches_tracked")}
    torch.save({"best_prec1": 10.0, "state_dict": state}, path)
    return path


def cifar10_batches_folder(root: Path, train_per_batch: int = 4, test: int = 20, seed: int = 0) -> Path:
    """A cifar-10-batches-py folder: 5 x `train_per_batch` training and `test` test images of random
    pixels, labels i % 10 within each batch, class names c0..c9."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, count in [(f"data_batch_{i}", train_per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        batch = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in np.arange(count) % 10]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return folder


def cifar10_npz(path: Path, count: int = 40, seed: int = 0) -> Path:
    """A CIFAR-10 subset .npz of `count` random test images, labels i % 10, class names c0..c9."""
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8), labels=np.arange(count) % 10,
             classes=np.array([f"c{i}" for i in range(10)]))
    return path


def tiny_imagefolder(root: Path, classes: int = 1000, filled: int = 4, train: int = 2, val: int = 1,
                     seed: int = 0) -> Path:
    """root/train/<class>/*.png and root/val/<class>/*.png: `classes` class folders, images in the first `filled`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for c in range(classes):
            folder = Path(root) / split / f"n{c:05d}"
            folder.mkdir(parents=True)
            for i in range(count if c < filled else 0):
                Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return Path(root)


def random_checkpoint(name: str, classes: int, path: Path, seed: int = 0) -> Path:
    """A randomly initialised models.build(name, classes), saved as a plain state dict."""
    torch.manual_seed(seed)
    torch.save(models.build(name, classes).state_dict(), path)
    return path
