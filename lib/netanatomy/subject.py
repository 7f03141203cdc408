"""What every method analyses: a `Subject` (a classifier and its data), built by `load_subject`.

- `SCALES` is the one table of built-in scales: per scale, the concept worlds and the zoo's recipe.
- `Data` is a data set's splits with what describes them (class names, normalisation, input size,
  a label for tables, a key for caches); `load_data(dataset, data_root, scale, ...)` builds it.
- `Subject` is a model with its `Data` and validation accuracy; `load_subject(model, dataset,
  data_root, weights, scale, ...)` builds it: on the concept world without `weights` the zoo's
  trained model, otherwise the architecture with the user's weights loaded. A real data set
  without weights is refused, so no method analyses a random network by accident
  (``allow_untrained=True`` says that this is the point).
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path

import numpy as np
from torch import nn

from . import data, models, zoo
from .errors import DataError, ParamError
from .runtime import pick_device, resolve_path
from .train import TrainConfig
from .world import WorldConfig, fingerprint as world_fingerprint


@dataclasses.dataclass(frozen=True)
class Scale:
    """A built-in scale: the concept worlds by purpose and the zoo's training recipe.

    worlds["zoo"]: the world the zoo's nets train on (NAD, dissection, decomposition);
    worlds["dka"] / worlds["hetero"]: the smaller worlds (24 px and 16 px) of the methods that train
    many networks (five seeds of each arm) within the time budget.
    """

    worlds: dict[str, WorldConfig]
    recipe: TrainConfig

    @property
    def world(self) -> WorldConfig:
        return self.worlds["zoo"]


#: The zoo's recipe: 3 epochs of one-cycle SGD (peak lr 0.2) with label smoothing 0.1, validated once at
#: the end. It reaches about the accuracy of the earlier 6-epoch cosine recipe (0.863 against 0.871 for
#: small_vgg) in half the time (issue 17).
_ZOO_RECIPE = TrainConfig(epochs=3, batch_size=128, lr=0.2, optimizer="sgd", weight_decay=5e-4,
                          schedule="onecycle", label_smoothing=0.1, eval_every=0, seed=0)
_SMOKE_WORLD = WorldConfig(image_size=32, n_train=600, n_val=200)

#: The built-in scales: "default" for `make reproduce`, "smoke" for the notebook tests.
SCALES: dict[str, Scale] = {
    "default": Scale({"zoo": WorldConfig(), "dka": WorldConfig(image_size=24, n_train=2000, n_val=1000),
                      "hetero": WorldConfig(image_size=16, n_train=2000, n_val=3000)}, _ZOO_RECIPE),
    "smoke": Scale({"zoo": _SMOKE_WORLD, "dka": _SMOKE_WORLD,
                    "hetero": WorldConfig(image_size=16, n_train=320, n_val=160)},
                   dataclasses.replace(_ZOO_RECIPE, epochs=2, batch_size=64)),
}


def scale(name: str) -> Scale:
    """The built-in scale `name` ('default' or 'smoke')."""
    if name not in SCALES:
        raise ParamError("scale", f"unknown scale {name!r}; choose one of {', '.join(SCALES)}")
    return SCALES[name]


# ----------------------------------------------------------------------------- data
_LABELS = {"concept_world": "concept world", "cifar10": "CIFAR-10", "cifar10_jpeg": "CIFAR-10 (JPEG)",
           "imagenet": "ImageNet", "places365": "Places365", "imagefolder": "ImageFolder"}


@dataclasses.dataclass
class Data:
    """A data set's splits (built on first use) and what describes them.

    The evaluation split may come from another source of the same classes (`eval_dataset`,
    `eval_root`): e.g. training images from the CIFAR-10 JPEG archive and evaluation on the
    original pixels of test images 0-999.
    """

    dataset: str
    root: Path | None = None
    world: WorldConfig | None = None
    image_size: int | None = None
    normalize: object = None
    progress: bool = True
    eval_dataset: str | None = None
    eval_root: Path | None = None
    max_train: int | None = None    # at most this many training images (a seeded draw; None: all)
    max_val: int | None = None      # at most this many evaluation images (a seeded draw; None: all)

    def split(self, name: str, augment: bool = False):
        """Split 'train' or 'val' ('val' is CIFAR-10's test split), with or without training augmentation,
        capped at `max_train` / `max_val` images by a seeded draw (the same images for both transforms)."""
        dataset, root = (self.eval_dataset or self.dataset, self.eval_root or self.root) if name == "val" else \
            (self.dataset, self.root)
        ds = data.get_dataset(dataset, root, split=name, train_aug=augment, image_size=self.image_size,
                              normalize=self.normalize, world=self.world, progress=self.progress)
        limit = self.max_val if name == "val" else self.max_train
        if limit is None or len(ds) <= limit:
            return ds
        return data.Subset(ds, np.sort(np.random.default_rng(0).choice(len(ds), limit, replace=False)))

    @cached_property
    def train(self):
        """Training images with evaluation transforms (path search, feature extraction)."""
        return self.split("train")

    @cached_property
    def train_aug(self):
        """Training images with the data set's training augmentation."""
        return self.split("train", augment=True)

    @cached_property
    def val(self):
        val = self.split("val")
        if self.eval_dataset is not None and list(val.classes) != list(self.train.classes):
            raise DataError(self.eval_root, f"holds the classes {list(val.classes)[:5]}..., not those of the "
                                            f"training data {list(self.train.classes)[:5]}...",
                            expected="the same classes in the same order")
        return val

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.val.classes]

    @property
    def input_size(self) -> int:
        if self.image_size is not None:
            return int(self.image_size)
        if self.world is not None:
            return self.world.image_size
        return 32 if self.dataset in ("cifar10", "cifar10_jpeg") else 224

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The (mean, std) the images are normalised with."""
        return data.resolve_normalize(self.dataset, self.normalize)

    @property
    def label(self) -> str:
        """How tables name this data, e.g. 'concept world (64 px)', 'CIFAR-10 (JPEG) train, CIFAR-10 test[0:1000]',
        with the caps when set: 'CIFAR-10 (JPEG), at most 5000 training / all evaluation images'."""
        if self.world is not None:
            name = f"{_LABELS['concept_world']} ({self.input_size} px)"
        elif self.eval_dataset is None:
            name = _LABELS.get(self.dataset, self.dataset)
        else:
            name = ", ".join(self.source_labels())
        if self.max_train is None and self.max_val is None:
            return name
        return f"{name}, at most {self.max_train or 'all'} training / {self.max_val or 'all'} evaluation images"

    def source_labels(self) -> tuple[str, str]:
        """How tables name the training and the evaluation images when they come from two sources
        (`eval_dataset`), e.g. ('CIFAR-10 (JPEG) train', 'CIFAR-10 test[0:1000]')."""
        return _label_of(self.dataset, self.root, "train"), _label_of(self.eval_dataset, self.eval_root, "test")

    @cached_property
    def source(self):
        """The world's configuration, or a content fingerprint of the files (`data.fingerprint`)."""
        if self.world is not None:
            return world_fingerprint(self.world)
        return [data.fingerprint(self.root)] + ([data.fingerprint(self.eval_root)] if self.eval_root else [])

    def key(self) -> dict:
        """What identifies the data in cache keys."""
        key = {"dataset": self.dataset, "eval_dataset": self.eval_dataset, "source": self.source,
               "image_size": self.image_size, "normalize": self.mean_std}
        if self.max_train is not None or self.max_val is not None:
            key["limits"] = [self.max_train, self.max_val]
        return key


def _label_of(dataset: str, root: Path | None, split: str) -> str:
    name = _LABELS.get(dataset, dataset)
    if dataset == "cifar10" and root is not None and root.is_file():
        return f"{name} {split}[0:{len(data.get_dataset(dataset, root, split='test'))}]"
    return f"{name} {split}"


def load_data(dataset: str = "concept_world", data_root: str | Path | None = None, scale_name: str = "default",
              world: str = "zoo", image_size: int | None = None, normalize=None, progress: bool = True,
              eval_dataset: str | None = None, eval_root: str | Path | None = None,
              max_train: int | None = None, max_val: int | None = None) -> Data:
    """The splits of `dataset`: the built-in world `world` of scale `scale_name`, or the real data at
    `data_root` (evaluated on `eval_dataset` at `eval_root` when given), each split capped at
    `max_train` / `max_val` images when given (a seeded draw)."""
    for name, value in (("max_train", max_train), ("max_val", max_val)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ParamError(name, f"must be an integer >= 1 or None, got {value!r}")
    for name, value in (("dataset", dataset), ("eval_dataset", eval_dataset)):
        if value is not None and value not in data.DATASETS:
            raise ParamError(name, f"unknown data set {value!r}; valid names: {', '.join(data.DATASETS)}")
    if dataset == "concept_world":
        if eval_dataset is not None:
            raise ParamError("eval_dataset", "the concept world is evaluated on its own validation split")
        w = scale(scale_name).worlds[world]
        if image_size is not None and image_size != w.image_size:
            w = dataclasses.replace(w, image_size=int(image_size))
        return Data(dataset, None, w, None, normalize, progress, max_train=max_train, max_val=max_val)
    if data_root is None:
        raise ParamError("data_root", f"data set {dataset!r} needs data_root: {data.layout(dataset)}")
    if eval_dataset is not None and eval_root is None:
        raise ParamError("eval_root", f"evaluation data set {eval_dataset!r} needs eval_root: {data.layout(eval_dataset)}")
    return Data(dataset, resolve_path(data_root), None, image_size, normalize, progress, eval_dataset,
                resolve_path(eval_root), max_train, max_val)


# ----------------------------------------------------------------------------- subject
@dataclasses.dataclass
class Subject:
    """A classifier to analyse with its data: what every method starts from."""

    name: str                       # architecture (models.build name)
    model: nn.Module
    data: Data | None
    weights: str | None = None      # checkpoint the weights came from (None: the zoo's trained model)
    val_acc: float | None = None    # validation accuracy when known (the zoo's)
    untrained: bool = False         # a randomly initialised network, on purpose

    @property
    def train_ds(self):
        return self.data.train

    @property
    def val_ds(self):
        return self.data.val

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    @property
    def input_size(self) -> int:
        return self.data.input_size

    @property
    def dataset(self) -> str:
        return self.data.dataset if self.data is not None else "-"


def load_subject(model: str = "small_vgg", dataset: str | None = "concept_world", data_root=None, weights=None,
                 scale_name: str = "default", device: str = "auto", progress: bool = True, *, world: str = "zoo",
                 image_size: int | None = None, normalize=None, num_classes: int | None = None,
                 allow_untrained: bool = False, eval_dataset: str | None = None, eval_root=None) -> Subject:
    """The classifier `model` and its data.

    On the concept world without `weights`: the zoo's `model` trained on the scale's world (cached).
    Otherwise `models.build(model)` with `weights` loaded (a DataError names a missing or unfitting
    file). `dataset=None` gives the model alone (then `num_classes` is needed). Without weights
    on real data the call is refused unless `allow_untrained`.
    """
    d = None if dataset is None else load_data(dataset, data_root, scale_name, world, image_size, normalize, progress,
                                               eval_dataset, eval_root)
    dev = pick_device(device)
    if d is not None and d.world is not None and weights is None:
        entry = zoo.trained(model, d.world, scale(scale_name).recipe, device=device, progress=progress)
        return Subject(model, entry.model, d, None, entry.val_acc)
    if weights is None and not allow_untrained:
        raise ParamError("weights", f"{dataset or 'this run'} needs the trained classifier's checkpoint: without "
                                    f"weights the {model} would be a random network (only the concept world "
                                    "has built-in trained models)")
    if num_classes is None:
        if d is None:
            raise ParamError("num_classes", "give the number of classes of the weights (e.g. 1000 for ImageNet)")
        num_classes = len(d.classes)
    net = models.build(model, int(num_classes), weights=resolve_path(weights) if weights is not None else None)
    return Subject(model, net.eval().to(dev), d, None if weights is None else str(weights), None, weights is None)
