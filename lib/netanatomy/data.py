"""Datasets and loaders: the concept world, ImageFolder trees (ImageNet, Places365), CIFAR-10.

Nothing is downloaded: real data sets are read from folders the user supplies.

- `get_dataset(name, root, split, ...)` is the one entry point (names in `DATASETS`).
- `transforms_for(dataset, train)` gives the standard pre-processing of each data set.
- `image_folder(root, split)` reads ``root/<split>/<class>/*.jpg`` (class index = sorted folder
  order), converting any image mode to RGB.
- `refolder_places365_val` turns Places365's flat validation folder into that layout.
- `cifar10(root, split)` reads the python-pickle ``cifar-10-batches-py`` folder;
  `cifar10_npz(path)` reads the shared ``cifar10_test_first1000.npz`` subset;
  `cifar10_jpeg(path, split)` reads CIFAR-10 as JPEG files from a tar archive (decoded once, cached).
- `raw_image(ds, i)` is item i's image before any transform.
- `make_loader` builds a DataLoader with a seeded order; `split_indices` and `Subset` split one
  data set into fit and evaluation parts.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.datasets import ImageFolder
from tqdm.auto import tqdm

from . import world as _world_module
from .cache import cached, cached_folder, entry as cache_entry
from .errors import DataError, ParamError
from .runtime import cache_key, resolve_path

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: CIFAR-10 constants used by Decomposing the Deep (Badola et al. 2021).
CIFAR10_MEAN: tuple[float, float, float] = (0.491, 0.482, 0.447)
CIFAR10_STD: tuple[float, float, float] = (0.247, 0.243, 0.261)
PLACES365_MEAN, PLACES365_STD = IMAGENET_MEAN, IMAGENET_STD


#: Data sets `get_dataset` knows.
DATASETS: tuple[str, ...] = ("concept_world", "imagenet", "places365", "cifar10", "cifar10_jpeg", "imagefolder")
IMAGE_FOLDER_LAYOUT = "root/<split>/<class>/*.jpg (class index = sorted folder order)"
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch", "batches.meta")


CIFAR10_JPEG_LAYOUT = "a .tar.gz holding train/<class>/NNNN.jpg and test/<class>/NNNN.jpg (CIFAR-10 as JPEG)"
#: sha256 of the archives we know by name: a file of this name with another checksum is damaged.
KNOWN_SHA256 = {"cifar10_jpeg.tar.gz": "45b041e867f5a40f79bfde38d3dd1fd511103d50068c1afecf6445e25234d4db"}


def layout(dataset: str) -> str:
    """The folder or file layout a real data set's root must have."""
    return {"cifar10": "a cifar-10-batches-py folder or a cifar10 .npz file",
            "cifar10_jpeg": CIFAR10_JPEG_LAYOUT}.get(dataset, IMAGE_FOLDER_LAYOUT)


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of a data set name: imagenet, places365, cifar10, concept_world (or world)."""
    table = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "places365": (PLACES365_MEAN, PLACES365_STD),
             "imagefolder": (IMAGENET_MEAN, IMAGENET_STD), "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
             "cifar10_jpeg": (CIFAR10_MEAN, CIFAR10_STD)}
    if name in ("concept_world", "world"):
        return tuple(_world_module.MEAN), tuple(_world_module.STD)
    if name not in table:
        raise ParamError("normalize", f"unknown normalisation {name!r}; use one of "
                                      f"{sorted(table) + ['concept_world']} or a (mean, std) pair")
    return table[name]


def resolve_normalize(dataset: str, normalize) -> tuple | None:
    """(mean, std) for a `normalize` parameter: None/True = the data set's own, False = none, a
    data-set name, or a (mean, std) pair."""
    if normalize is None or normalize is True:
        return normalization(dataset)
    if normalize is False:
        return None
    if isinstance(normalize, str):
        return normalization(normalize)
    try:
        mean, std = normalize
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError) as exc:
        raise ParamError("normalize", f"expected a data-set name or a (mean, std) pair, got {normalize!r}") from exc
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ParamError("normalize", f"mean and std need 3 values each (std > 0), got {normalize!r}")
    return mean, std


def transforms_for(dataset: str, train: bool, image_size: int | None = None, normalize=None):
    """Standard torchvision pre-processing of a data set (PIL image in, normalised tensor out).

    imagenet / places365 / imagefolder: train RandomResizedCrop(224) + flip, eval Resize(256) +
    CenterCrop(224) (`image_size` replaces 224, the resize scaling along); cifar10: train
    RandomCrop(32, padding=4) + flip, eval none; concept_world: train RandomResizedCrop(size,
    scale=(0.6, 1)) + flip, eval none. A cifar10 / concept_world `image_size` other than the native
    one adds a Resize. Then ToTensor and Normalize with the data set's mean/std, or with
    `normalize`: a data-set name ('imagenet', 'cifar10', ...), a (mean, std) pair, or False (none).
    """
    if dataset not in DATASETS:
        raise ParamError("dataset", f"unknown data set {dataset!r}; valid names: {', '.join(DATASETS)}")
    if image_size is not None and (not isinstance(image_size, (int, np.integer)) or image_size < 8):
        raise ParamError("image_size", f"must be an integer >= 8, got {image_size!r}")
    steps: list = []
    if dataset in ("imagenet", "places365", "imagefolder"):
        size = int(image_size or 224)
        if train:
            steps += [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        else:
            steps += [T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size)]
    elif dataset in ("cifar10", "cifar10_jpeg"):
        size = int(image_size or 32)
        if size != 32:
            steps.append(T.Resize(size))
        if train:
            steps += [T.RandomCrop(size, padding=size // 8), T.RandomHorizontalFlip()]
    else:  # concept_world
        native = _world_module.WorldConfig().image_size
        size = int(image_size or native)
        if train:
            steps += [T.RandomResizedCrop(size, scale=(0.6, 1.0)), T.RandomHorizontalFlip()]
        elif image_size is not None:
            steps.append(T.Resize((size, size)))
    steps.append(T.ToTensor())
    norm = resolve_normalize(dataset, normalize)
    if norm is not None:
        steps.append(T.Normalize(*norm))
    return T.Compose(steps)


# ----------------------------------------------------------------------------- ImageFolder

def open_image(path: str | Path) -> Image.Image:
    """An image file, read whole in its own mode; an unreadable or truncated file stops with a
    DataError naming it."""
    try:
        with open(path, "rb") as fh:
            img = Image.open(fh)
            img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(path, f"is not a readable image ({type(exc).__name__}: {exc})",
                        expected="a complete JPEG/PNG image file") from None
    return img


def rgb_loader(path: str) -> Image.Image:
    """Open an image file as RGB, whatever its mode (CMYK, RGBA, LA, L, P, 1, I;16, F); an unreadable
    or truncated file stops with a DataError naming it."""
    img = open_image(path)
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    return img.convert("RGB")


def _check_folder(path: Path, what: str = IMAGE_FOLDER_LAYOUT) -> list[str]:
    if not path.is_dir():
        raise DataError(path, "folder not found", expected=what)
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(path, "holds no class subfolders", expected=what)
    return classes


def image_folder(root: str | Path, split: str | None = "train", transform: Callable | None = None):
    """torchvision ImageFolder on ``root/<split>`` (``split=None``: on root itself), images as RGB.

    Class index = sorted class-folder order; empty class folders keep their index."""
    path = Path(root) / split if split else Path(root)
    _check_folder(path)
    # empty class folders are kept (class index = sorted folder order, even for a partial copy)
    ds = ImageFolder(str(path), transform=transform, loader=rgb_loader, allow_empty=True)
    if len(ds) == 0:
        raise DataError(path, "its class folders hold no images", expected=IMAGE_FOLDER_LAYOUT)
    return ds


def _read_lines(path: Path, what: str) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise DataError(path, "file not found", expected=what)
    out = []
    with open(path, encoding="utf-8") as fh:
        for no, line in enumerate(fh, 1):
            if line.strip():
                out.append((no, line.split()))
    if not out:
        raise DataError(path, "is empty", expected=what)
    return out


def _places_names(categories_file: Path) -> list[str]:
    expected = "lines '<path> <index>', e.g. '/a/airfield 0', indices 0..K-1"
    names: dict[int, str] = {}
    for no, parts in _read_lines(categories_file, expected):
        if len(parts) != 2 or not parts[1].isdigit():
            raise DataError(categories_file, f"line {no} is malformed: {' '.join(parts)!r}", expected=expected)
        cat = parts[0].strip("/")
        if len(cat) > 2 and cat[1] == "/" and cat[0].isalpha():  # '/a/airfield' -> 'airfield'
            cat = cat[2:]
        idx = int(parts[1])
        if idx in names:
            raise DataError(categories_file, f"line {no}: index {idx} appears twice", expected=expected)
        names[idx] = cat.replace("/", "-")
    if sorted(names) != list(range(len(names))):
        raise DataError(categories_file, "indices are not 0..K-1", expected=expected)
    ordered = [names[i] for i in range(len(names))]
    if ordered != sorted(ordered) or len(set(ordered)) != len(ordered):
        # folder order must equal the class index: prefix with the index where names do not sort so
        width = len(str(len(ordered) - 1))
        ordered = [f"{i:0{width}d}_{n}" for i, n in enumerate(ordered)]
    return ordered


def refolder_places365_val(val_dir: str | Path, list_file: str | Path, out_root: str | Path,
                           categories_file: str | Path | None = None, copy: bool = False,
                           progress: bool = True) -> Path:
    """Lay Places365's flat validation folder out as ``out_root/val/<class>/<file>`` (symlinks,
    or copies with ``copy=True``) so `image_folder(out_root, 'val')` reads it; return that folder.

    `list_file` is ``places365_val.txt`` (lines ``Places365_val_00000001.jpg 165``); class folder
    names come from ``categories_places365.txt`` (lines ``/a/airfield 0``) when given, else the
    zero-padded class index. Sorted folder order equals the class index. Written to a temporary
    folder and renamed; a finished folder from the same inputs is reused.
    """
    val_dir, list_file, out_root = Path(val_dir), Path(list_file), Path(out_root)
    if not val_dir.is_dir():
        raise DataError(val_dir, "Places365 validation folder not found",
                        expected="a folder of Places365_val_XXXXXXXX.jpg files (val_256 or val_large)")
    expected = "lines '<file name> <class index>', e.g. 'Places365_val_00000001.jpg 165'"
    entries: list[tuple[str, int]] = []
    for no, parts in _read_lines(list_file, expected):
        if len(parts) != 2 or not parts[1].isdigit() or "/" in parts[0] or parts[0] in (".", ".."):
            raise DataError(list_file, f"line {no} is malformed: {' '.join(parts)!r}", expected=expected)
        entries.append((parts[0], int(parts[1])))
    n_classes = max(i for _, i in entries) + 1
    if categories_file is not None:
        names = _places_names(Path(categories_file))
        if n_classes > len(names):
            raise DataError(list_file, f"uses class index {n_classes - 1} but {categories_file} names only "
                                       f"{len(names)} classes", expected=expected)
    else:
        n_classes = max(n_classes, 365)
        width = len(str(n_classes - 1))
        names = [f"{i:0{width}d}" for i in range(n_classes)]
    for name, _ in entries:
        if not (val_dir / name).is_file():
            raise DataError(val_dir / name, f"listed in {list_file} but missing", expected=f"files listed in {list_file}")

    key = cache_key(val_dir=str(val_dir.resolve()), list_file=str(list_file.resolve()), names=names,
                    n=len(entries), copy=copy)

    def build(tmp: Path) -> None:
        for name in names:
            (tmp / name).mkdir()
        for fname, idx in tqdm(entries, desc="places365 val", disable=not progress, leave=False):
            src, dst = (val_dir / fname).resolve(), tmp / names[idx] / fname
            if copy:
                shutil.copy2(src, dst)
            else:
                os.symlink(src, dst)

    return cached_folder(out_root / "val", key, build, replace_own=False)


# ----------------------------------------------------------------------------- CIFAR-10

class ArrayDataset(torch.utils.data.Dataset):
    """Images held in memory: ``images`` uint8 (N,H,W,3) RGB, ``targets`` list, ``classes`` names.

    Items are ``(transform(PIL image), label)``; ``transform=None`` returns the PIL image (as
    torchvision's CIFAR10 does).
    """

    def __init__(self, images: np.ndarray, labels: Sequence[int], classes: Sequence[str],
                 transform: Callable | None = None, source: str = ""):
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ParamError("images", f"expected (N, H, W, 3) uint8, got shape {images.shape}")
        if len(labels) != len(images):
            raise ParamError("labels", f"{len(labels)} labels for {len(images)} images")
        self.images = images
        self.targets = [int(v) for v in labels]
        self.classes = [str(c) for c in classes]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.transform = transform
        self.source = source

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, classes={len(self.classes)}, source={self.source!r})"


def _cifar_split(split: str) -> str:
    if split in ("val", "test"):
        return "test"
    if split == "train":
        return "train"
    raise ParamError("split", f"CIFAR-10 has splits 'train' and 'test' ('val' means test), got {split!r}")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(path, f"cannot be read as a CIFAR-10 pickle batch ({exc})",
                        expected="the python version of CIFAR-10 (cifar-10-python.tar.gz)") from exc
    if not isinstance(obj, dict):
        raise DataError(path, "is not a CIFAR-10 batch (not a dict)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def cifar10(root: str | Path, split: str = "train", transform: Callable | None = None) -> ArrayDataset:
    """CIFAR-10 from the python-pickle folder ``cifar-10-batches-py`` (no download).

    Files are loaded with pickle: point this only at a trusted copy of the data set.
    """
    root = Path(root)
    split = _cifar_split(split)
    expected = f"a cifar-10-batches-py folder holding {', '.join(CIFAR10_FILES)}"
    if not (root / "batches.meta").exists() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"  # torchvision-style parent folder given
    if not root.is_dir():
        raise DataError(root, "CIFAR-10 folder not found", expected=expected)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [n for n in [*names, "batches.meta"] if not (root / n).is_file()]
    if missing:
        raise DataError(root / missing[0], f"missing ({len(missing)} file(s) missing: {', '.join(missing)})",
                        expected=expected)
    images, labels = [], []
    for n in names:
        batch = _unpickle(root / n)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            lab = batch["labels"] if "labels" in batch else batch["fine_labels"]
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.extend(int(v) for v in lab)
        except (KeyError, ValueError) as exc:
            raise DataError(root / n, f"malformed CIFAR-10 batch ({exc!r})",
                            expected="a dict with 'data' (N, 3072) uint8 and 'labels'") from exc
    meta = _unpickle(root / "batches.meta")
    if "label_names" not in meta:
        raise DataError(root / "batches.meta", "has no 'label_names'")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta["label_names"]]
    return ArrayDataset(np.concatenate(images), labels, classes, transform, source=str(root))


def cifar10_npz(path: str | Path, transform: Callable | None = None,
                indices: Sequence[int] | np.ndarray | None = None) -> ArrayDataset:
    """The CIFAR-10 subset file (``images`` uint8 (N,3,32,32) RGB, ``labels``, ``classes``)."""
    path = Path(path)
    expected = "an .npz with images uint8 (N, 3, 32, 32), labels int (N,), classes (10,)"
    if not path.is_file():
        raise DataError(path, "CIFAR-10 npz file not found", expected=expected)
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels, classes = z["images"], z["labels"], z["classes"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(path, f"cannot be read ({exc})", expected=expected) from exc
    if images.ndim != 4 or images.shape[1] != 3 or len(labels) != len(images):
        raise DataError(path, f"images have shape {images.shape} for {len(labels)} labels", expected=expected)
    images = images.transpose(0, 2, 3, 1)
    if indices is not None:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(labels)):
            raise ParamError("indices", f"must lie in [0, {len(labels)}), got range [{idx.min()}, {idx.max()}]")
        images, labels = images[idx], labels[idx]
    return ArrayDataset(images, labels.tolist(), classes.tolist(), transform, source=str(path))


def fingerprint(root: str | Path) -> str:
    """A cheap content fingerprint of a file or a folder tree for cache keys: the sha1 of every
    file's relative path, size and modification time (no file is read), so adding, removing,
    replacing or editing an image changes it. About a second per 100,000 files."""
    root = Path(root)
    h = hashlib.sha1()
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(root) if p != root else p.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def sha256_of(path: Path) -> str:
    """The sha256 of a file (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _decode_jpeg_archive(path: Path, split: str, progress: bool) -> dict:
    """Every ``<split>/<class>/<name>.jpg`` of a tar archive decoded to uint8 RGB, in class then name order."""
    found: dict[str, list[tuple[str, np.ndarray]]] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tqdm(tar, desc=f"read {path.name} {split}", disable=not progress, leave=False):
                parts = member.name.strip("./").split("/")
                if not member.isfile() or len(parts) != 3 or parts[0] != split or not parts[2].lower().endswith(".jpg"):
                    continue
                where = f"{path}:{member.name}"
                try:
                    with Image.open(io.BytesIO(tar.extractfile(member).read())) as img:
                        found.setdefault(parts[1], []).append((parts[2], np.asarray(img.convert("RGB"))))
                except (OSError, ValueError, SyntaxError) as exc:
                    raise DataError(where, f"is not a readable JPEG image ({exc})", expected="a JPEG file") from exc
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(path, f"cannot be read as a tar archive ({exc})", expected=CIFAR10_JPEG_LAYOUT) from exc
    if not found:
        raise DataError(path, f"holds no {split}/<class>/*.jpg images", expected=CIFAR10_JPEG_LAYOUT)
    classes = sorted(found)
    shapes = {img.shape for c in classes for _, img in found[c]}
    if len(shapes) != 1:
        raise DataError(path, f"{split} images differ in size ({sorted(shapes)[:3]})", expected="32x32 RGB JPEG files")
    items = [(c, img) for c in classes for _, img in sorted(found[c], key=lambda item: item[0])]
    return {"images": np.stack([img for _, img in items]), "labels": np.array([classes.index(c) for c, _ in items]),
            "classes": np.array(classes)}


def cifar10_jpeg(path: str | Path, split: str = "train", transform: Callable | None = None,
                 progress: bool = True) -> ArrayDataset:
    """CIFAR-10 as JPEG files in a tar archive (``train/<class>/NNNN.jpg``, ``test/<class>/NNNN.jpg``).

    The archive is read in place and decoded once into the cache (keyed by its sha256; an archive
    whose name is in `KNOWN_SHA256` must have that checksum). Class index = sorted class names
    (CIFAR-10's standard order); within a class, images keep their file order (the official order).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "CIFAR-10 JPEG archive not found", expected=CIFAR10_JPEG_LAYOUT)
    split = _cifar_split(split)
    digest = sha256_of(path)
    known = KNOWN_SHA256.get(path.name)
    if known is not None and digest != known:
        raise DataError(path, f"has sha256 {digest[:12]}..., not the published {known[:12]}... (damaged or "
                              "another file)", expected="the archive listed in ../shared/data/README.md")
    arrays = cached(cache_entry("data", "cifar10_jpeg", sha256=digest, split=split, version=1),
                    lambda _checkpoint: _decode_jpeg_archive(path, split, progress))
    return ArrayDataset(arrays["images"], arrays["labels"].tolist(), arrays["classes"].tolist(), transform,
                        source=f"{path} ({split})")


# ----------------------------------------------------------------------------- entry point

def get_dataset(name: str, root: str | Path | None = None, split: str = "train", train_aug: bool | None = None,
                image_size: int | None = None, normalize=None, world=None, progress: bool = True):
    """A data set by name (see `DATASETS`); items are (normalised tensor, label).

    concept_world: `world` is a WorldConfig (default one when None), root is ignored.
    imagenet / places365 / imagefolder: an ImageFolder tree ``root/<split>/<class>/*.jpg``.
    cifar10: root is a cifar-10-batches-py folder, or the path of an .npz subset file; split
    train or test ('val' = test). `train_aug` (default: split == 'train') picks the training
    augmentation; `normalize` overrides the mean/std (a name, a (mean, std) pair, or False).
    """
    if name not in DATASETS:
        raise ParamError("dataset", f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    if not isinstance(split, str) or split not in ("train", "val", "test"):
        raise ParamError("split", f"must be 'train', 'val' or 'test', got {split!r}")
    aug = (split == "train") if train_aug is None else bool(train_aug)
    if name == "concept_world":
        w = _world_module
        cfg = world if world is not None else w.WorldConfig()
        if not isinstance(cfg, w.WorldConfig):
            raise ParamError("world", f"expected a WorldConfig, got {type(cfg).__name__}")
        if not aug and normalize is None and image_size in (None, cfg.image_size):
            return w.ConceptWorld(split, cfg, transform=None, progress=progress)  # fast tensor path
        size = image_size or cfg.image_size
        return w.ConceptWorld(split, cfg, transform=transforms_for(name, aug, size, normalize), progress=progress)
    if root is None:
        raise DataError("<root not given>", f"data set {name!r} needs a root", expected=layout(name))
    transform = transforms_for(name, aug, image_size, normalize)
    root = resolve_path(root)
    if name == "cifar10_jpeg":
        return cifar10_jpeg(root, split, transform, progress)
    if name == "cifar10":
        if root.suffix == ".npz" or root.is_file():
            if not root.is_file():
                raise DataError(root, "CIFAR-10 npz file not found", expected=layout("cifar10"))
            if _cifar_split(split) == "train":
                raise ParamError("split", f"{root} holds CIFAR-10 test images only; use split='test' and "
                                          "split_indices() to carve a fit part out of it")
            return cifar10_npz(root, transform)
        return cifar10(root, split, transform)
    return image_folder(root, split, transform)


# ----------------------------------------------------------------------------- raw images

def raw_image(ds, index: int) -> np.ndarray:
    """Item `index` of a data set as the uint8 (H, W, 3) RGB image it was read from, before any
    transform: the array of an in-memory data set (concept world, CIFAR-10), the file of an
    ImageFolder; Subsets are followed to their base data set."""
    while isinstance(ds, torch.utils.data.Subset):
        ds, index = ds.dataset, ds.indices[index]
    images = getattr(ds, "images", None)
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[-1] == 3:
        return images[index]
    if hasattr(ds, "samples") and hasattr(ds, "loader"):
        return np.asarray(ds.loader(ds.samples[index][0]).convert("RGB"))
    raise ParamError("dataset", f"{type(ds).__name__} does not expose its raw images (expected an in-memory "
                                "array `images` or an ImageFolder)")


# ----------------------------------------------------------------------------- loaders and splits

def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0,
                drop_last: bool = False, pin_memory: bool | None = None,
                collate_fn: Callable | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader whose order (and worker seeds) follow `seed` (`collate_fn`: torch's default when None)."""
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ParamError("batch_size", f"must be a positive integer, got {batch_size!r}")
    if not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
        raise ParamError("num_workers", f"must be an integer >= 0, got {num_workers!r}")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.utils.data.DataLoader(
        dataset, batch_size=int(batch_size), shuffle=shuffle, generator=gen, num_workers=int(num_workers),
        drop_last=drop_last, worker_init_fn=_seed_worker,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=False, collate_fn=collate_fn)


def split_indices(n: int, fraction: float | None = None, n_fit: int | None = None, seed: int = 0,
                  labels: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (fit, eval) index arrays, deterministically from `seed`.

    Give the fit part as a `fraction` of n or as a count `n_fit` (default fraction 0.5). With
    `labels`, the split is stratified: each class contributes in proportion. Both arrays are sorted.
    """
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ParamError("n", f"need at least 2 items to split, got {n!r}")
    if fraction is not None and n_fit is not None:
        raise ParamError("n_fit", "give either fraction or n_fit, not both")
    if n_fit is None:
        fraction = 0.5 if fraction is None else fraction
        if not 0 < fraction < 1:
            raise ParamError("fraction", f"must lie strictly between 0 and 1, got {fraction!r}")
        n_fit = int(round(fraction * n))
    if not 0 < n_fit < n:
        raise ParamError("n_fit", f"must lie strictly between 0 and n={n}, got {n_fit}")
    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(n)
        return np.sort(perm[:n_fit]), np.sort(perm[n_fit:])
    labels = np.asarray(labels)
    if len(labels) != n:
        raise ParamError("labels", f"{len(labels)} labels for n={n}")
    # stratified: shuffle within each class, then take items in a class-interleaved order
    order = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        order.append(np.stack([(np.arange(len(idx)) + rng.random()) / len(idx), idx], 1))
    ranked = np.concatenate(order)
    ranked = ranked[np.lexsort((ranked[:, 1], ranked[:, 0]))][:, 1].astype(np.int64)
    return np.sort(ranked[:n_fit]), np.sort(ranked[n_fit:])


class Subset(torch.utils.data.Subset):
    """torch Subset that keeps ``classes`` and gives the subset's ``targets``."""

    def __init__(self, dataset, indices: Sequence[int]):
        super().__init__(dataset, [int(i) for i in indices])
        self.classes = list(getattr(dataset, "classes", []))
        base = getattr(dataset, "targets", None)
        self.targets = [int(base[i]) for i in self.indices] if base is not None else None

    def __repr__(self) -> str:
        return f"Subset(n={len(self)}, of={self.dataset!r})"
