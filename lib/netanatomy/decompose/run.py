"""The decomposition notebook's runs: its checked `Config`, the `Setup` (the subject with its fit, eval
and training parts and their pooled features), the finetuned decomposed model and the CSG baseline.
The tables computed from them are in `netanatomy.decompose.tables`.

Every cached result goes through `netanatomy.cache`: the pooled features of each part (keyed by the
model's weights and the data), the finetuned decomposed model and the trained CSG model (both
resumable through `train.fit`'s checkpoint). A cached file that cannot be read or lacks its parts
is damaged: `cache.cached` sets it aside (naming it) and computes it again.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from torch import nn
from torch.utils.data import Dataset

from .. import cache, data, models
from ..config import RunConfig, boolean, choice, integer, items, mapping, number, optional, param, text
from ..errors import DataError, require
from ..runtime import pick_device, resolve_path, weights_fingerprint
from ..subject import Data, Subject, load_subject
from . import csg as csg_math, files, method
from .files import read_indices
from .csg import CSGNet
from .method import DecomposedHead, Features, Indices


# ============================================================================ config
def _index_count(name: str, value) -> int:
    """n >= 1, also given as its digits (papermill passes a dict's keys as strings)."""
    return integer(1)(name, int(value) if isinstance(value, str) and value.isdigit() else value)


@dataclasses.dataclass
class Config(RunConfig):
    """Checked parameters of the decomposition notebook (its parameters cell describes each)."""

    model: str = param("small_resnet", choice(*models.MODEL_NAMES), "architecture")
    weights: str | None = param(None, optional(text()), "checkpoint (None: the zoo's model on the concept world)")
    dataset: str = param("concept_world", choice(*data.DATASETS), "data set")
    data_root: str | None = param(None, optional(text()), "real data: a folder, the CIFAR-10 .npz or JPEG archive")
    eval_dataset: str | None = param(None, optional(choice(*data.DATASETS)), "evaluation data set (None: dataset's test split)")
    eval_root: str | None = param(None, optional(text()), "evaluation data: a folder or the CIFAR-10 .npz")
    normalize: str = param("imagenet", choice("imagenet", "cifar10"), "CIFAR-10 input normalisation")
    k: int = param(5, integer(1), "top-k features per image in the frequency histogram")
    n: int = param(5, integer(1), "influential features per class |S_c|")
    k_grid: list = param([5, 10, 15, 20, 25, 30], items(integer(1)), "k values of the sweep")
    n_grid: list = param([5, 10, 20], items(integer(1)), "n values of the sweep and the MI table")
    published_indices: dict | None = param(None, optional(mapping(_index_count, text())), "{n: index file}")
    csg_checkpoint: str | None = param(None, optional(text()), "CSG checkpoint (None: train CSG)")
    csg_index_file: str | None = param(None, optional(text()), "published CSG index file")
    csg_epochs: int = param(2, integer(0), "CSG training epochs (0 without csg_checkpoint: no CSG baseline)")
    csg_lr: float = param(1e-3, number(0, lo_open=True), "CSG learning rate")
    csg_gate_lr_mult: float = param(30.0, number(0, lo_open=True), "gate learning-rate multiple")
    csg_lambda_1: float = param(1.0, number(0), "weight of the gated path's cross-entropy")
    csg_lambda_2: float = param(0.002, number(0), "weight of the gates' l1 term")
    finetune_epochs: int = param(2, integer(0), "finetuning epochs")
    lr: float = param(1e-4, number(0, lo_open=True), "finetuning learning rate (Adam)")
    batch_size: int = param(64, integer(1), "finetuning and CSG batch size")
    noise: str = param("replace", choice("replace", "additive"), "essentiality noise: replace (paper) or additive")
    noise_scale: float = param(1.0, number(0), "additive noise in feature standard deviations")
    mi_self_pairs: bool = param(True, boolean(), "MI average includes self-pairs (upstream)")
    n_random: int = param(100, integer(2, 10_000), "random index sets (and noise draws) per control")
    fit_fraction: float = param(0.5, number(0, 1, lo_open=True, hi_open=True), "test-only data: fit share")
    fit_per_class: int | None = param(None, optional(integer(1)), "index extraction: first images per class")
    train_per_class: int | None = param(None, optional(integer(1)), "finetuning / CSG: first images per class")
    max_train_images: int | None = param(None, optional(integer(1)), "cap on finetuning / CSG images")
    max_fit_images: int | None = param(None, optional(integer(1)), "cap on index-extraction images")
    max_eval_images: int | None = param(None, optional(integer(2)), "cap on evaluation images")

    def validate(self) -> None:
        """Real data needs weights; every named file exists; k, n and the grids fit the D features."""
        require(self.dataset == "concept_world" or self.weights is not None, "weights",
                f"a checkpoint path is needed for dataset {self.dataset!r} (only the built-in data has trained models)")
        D = feature_count(self.model)
        for name, values in (("k", [self.k]), ("n", [self.n]), ("k_grid", self.k_grid), ("n_grid", self.n_grid),
                             ("published_indices", list(self.published_indices or {}))):
            for value in values:
                require(value <= D, name, f"must be at most the {self.model}'s D = {D} pooled features, got {value}")
        files.existing("weights", self.weights, "a checkpoint saved with torch.save")
        if self.dataset != "concept_world":
            require(self.data_root is not None, "data_root", f"data set {self.dataset!r} needs data_root: "
                                                             f"{data.layout(self.dataset)}")
            files.existing("data_root", self.data_root, data.layout(self.dataset))
        if self.eval_dataset is not None:
            require(self.eval_root is not None, "eval_root", f"evaluation data set {self.eval_dataset!r} needs "
                                                             f"eval_root: {data.layout(self.eval_dataset)}")
            files.existing("eval_root", self.eval_root, data.layout(self.eval_dataset))
        for path in (self.published_indices or {}).values():
            files.existing("published_indices", path, files.INDEX_LAYOUT)
        files.existing("csg_checkpoint", self.csg_checkpoint, "a CSG checkpoint (model_state_dict with 'csg')")
        files.existing("csg_index_file", self.csg_index_file, files.INDEX_LAYOUT)

    @property
    def csg(self) -> bool:
        """Whether the run has a CSG baseline (a checkpoint, or training epochs)."""
        return self.csg_checkpoint is not None or self.csg_epochs > 0


#: The CIFAR-10 readers (the pickle folder or .npz, and the JPEG archive): `normalize` applies to them.
CIFAR10 = ("cifar10", "cifar10_jpeg")


def feature_count(model_name: str) -> int:
    """D, the number of pooled features entering the head of architecture `model_name`."""
    return models.head(models.build(model_name, 2))[1].in_features


# ============================================================================ the subject and its parts
@dataclasses.dataclass
class Setup:
    """What the notebook analyses: the subject, its data (fit / eval / training parts) and their features."""

    subject: Subject
    fit_ds: Dataset            # index extraction (no augmentation)
    eval_ds: Dataset           # accuracy, essentiality
    train_ds: Dataset          # finetuning and CSG training (with augmentation)
    fit_label: str
    eval_label: str
    train_label: str
    notes: list[str]
    reference: bool            # the seed's ResNet-20 / CIFAR-10 numbers apply
    all_label: str | None = None  # fit + eval together, when both are parts of one test set
    feats_fit: Features | None = None
    feats_eval: Features | None = None

    @property
    def model(self) -> nn.Module:
        return self.subject.model

    @property
    def classes(self) -> list[str]:
        return self.subject.classes

    @property
    def linear(self) -> nn.Linear:
        return models.head(self.model)[1]

    @property
    def num_features(self) -> int:
        return self.linear.weight.shape[1]


def _subset(ds, positions, limit: int | None, seed: int) -> data.Subset:
    """data.Subset of `positions`, capped at `limit` items by a seeded draw (kept in order)."""
    positions = np.asarray(positions)
    if limit is not None and len(positions) > limit:
        positions = np.sort(np.random.default_rng(seed).choice(positions, size=limit, replace=False))
    return data.Subset(ds, positions.tolist())


def _first_per_class(ds, count: int | None, param_name: str) -> np.ndarray:
    """Positions of the first `count` items of each class of `ds` (its order; all items for None)."""
    targets = np.asarray(ds.targets)
    if count is None:
        return np.arange(len(targets))
    per_class = [np.flatnonzero(targets == c) for c in np.unique(targets)]
    smallest = min(len(p) for p in per_class)
    require(count <= smallest, param_name, f"must be at most {smallest}, the images of the smallest training class")
    return np.sort(np.concatenate([p[:count] for p in per_class]))


def _split_labels(d: Data) -> tuple[str, str]:
    """How tables name the training and the evaluation images, e.g. 'CIFAR-10 (JPEG) train' and
    'CIFAR-10 test[0:1000]'."""
    if d.eval_dataset is not None:
        return d.source_labels()
    name = "concept world" if d.world is not None else d.label
    return f"{name} train", f"{name} {'test' if d.dataset in CIFAR10 else 'val'}"


def _split_parts(cfg: Config, subject: Subject) -> dict:
    """Fit and training parts from the training split (the first `fit_per_class` / `train_per_class`
    images of each class, then the seeded caps), eval part = the validation (CIFAR-10: test) split,
    or the evaluation source (`eval_dataset`)."""
    d = subject.data
    fit_pos = _first_per_class(d.train, cfg.fit_per_class, "fit_per_class")
    train_pos = _first_per_class(d.train, cfg.train_per_class, "train_per_class")
    fit_ds = _subset(d.train, fit_pos, cfg.max_fit_images, cfg.seed + 1)
    train_ds = _subset(d.train_aug, train_pos, cfg.max_train_images, cfg.seed)
    eval_ds = _subset(d.val, np.arange(len(d.val)), cfg.max_eval_images, cfg.seed + 2)
    train_name, eval_name = _split_labels(d)
    notes = []
    if subject.val_acc is not None:
        notes.append(f"built-in {subject.name} from the zoo (scale {cfg.scale!r}), validation accuracy "
                     f"{100 * subject.val_acc:.2f} %")
    for what, ds, per_class, names in (
            ("indices are extracted on", fit_ds, cfg.fit_per_class, ("fit_per_class", "max_fit_images")),
            ("finetuning and CSG training use", train_ds, cfg.train_per_class, ("train_per_class", "max_train_images"))):
        chosen = len(d.train) if per_class is None else per_class * len(d.classes)
        if per_class is not None:
            notes.append(f"{what} the first {per_class} images of each class ({chosen} of the {len(d.train)} "
                         f"{train_name} images; {names[0]})")
        if len(ds) < chosen:
            notes.append(f"{what} a seeded subset of {len(ds)} of those {chosen} images ({names[1]})")
    if len(eval_ds) < len(d.val):
        notes.append(f"every accuracy is measured on a seeded subset of {len(eval_ds)} of the {len(d.val)} "
                     f"{eval_name} images (max_eval_images)")
    return dict(fit_ds=fit_ds, eval_ds=eval_ds, train_ds=train_ds, fit_label=f"{train_name} ({len(fit_ds)} images)",
                eval_label=f"{eval_name} ({len(eval_ds)} images)", train_label=f"{train_name} ({len(train_ds)} images)",
                notes=notes)


def _test_split_parts(cfg: Config, d: Data) -> dict:
    """Test images only (the shared CIFAR-10 .npz): split per class, seeded, into a fit and an eval part."""
    for name in ("fit_per_class", "train_per_class"):
        require(getattr(cfg, name) is None, name, f"applies to training images; {d.root.name} holds test images "
                                                  "only (fit_fraction sets its fit part; or give eval_dataset)")
    full = d.val
    fit_pos, eval_pos = data.split_indices(len(full), fraction=cfg.fit_fraction, seed=cfg.seed, labels=full.targets)
    fit_ds, eval_ds = data.Subset(full, fit_pos), _subset(full, eval_pos, cfg.max_eval_images, cfg.seed + 2)
    base = f"CIFAR-10 test[0:{len(full)}]"
    note = (f"only the first {len(full)} CIFAR-10 test images are available: they are split per class "
            f"(seed {cfg.seed}) into a fit part ({len(fit_ds)}: index extraction, finetuning, CSG training) "
            f"and an eval part ({len(eval_ds)}: every accuracy); numbers are '{base}', not the full test set")
    train_ds = _subset(d.split("val", augment=True), fit_pos, cfg.max_train_images, cfg.seed)
    return dict(fit_ds=fit_ds, eval_ds=eval_ds, train_ds=train_ds, fit_label=f"{base} fit part ({len(fit_ds)} images)",
                eval_label=f"{base} eval part ({len(eval_ds)} images)",
                train_label=f"{base} fit part ({len(train_ds)} images)",
                all_label=f"{base} all ({len(full)} images)", notes=[note])


def _data_key(S: Setup, cfg: Config) -> dict:
    """What decides the images of every part (for cache keys)."""
    return {"data": S.subject.data.key(), "fit_fraction": cfg.fit_fraction, "seed": cfg.seed,
            "fit_per_class": cfg.fit_per_class, "train_per_class": cfg.train_per_class,
            "max_fit_images": cfg.max_fit_images, "max_train_images": cfg.max_train_images,
            "max_eval_images": cfg.max_eval_images}


def _reader(*keys: str):
    """A cache `read_file` that loads our torch file and refuses one lacking any of `keys` (damaged)."""
    def read_file(path: Path) -> dict:
        saved = cache.torch_load(path)
        missing = [k for k in keys if not isinstance(saved, dict) or k not in saved]
        if missing:
            raise ValueError(f"lacks {', '.join(missing)}")
        return saved
    return read_file


def features(model: nn.Module, part: str, S: Setup, cfg: Config, label: str = "") -> Features:
    """Pooled features of `model` over part `part` ('fit' or 'eval') of the setup (cached)."""
    ds = {"fit": S.fit_ds, "eval": S.eval_ds}[part]
    path = cache.entry(("decompose", "features"), part, model=weights_fingerprint(model), **_data_key(S, cfg))
    names = [f.name for f in dataclasses.fields(Features)]
    return cache.cached(path, lambda _: method.extract_features(model, ds, device=cfg.device, progress=cfg.progress),
                        load=lambda saved: Features(**saved), dump=dataclasses.asdict, read_file=_reader(*names),
                        label=f"features {label or 'model'} {part}")


def setup(cfg: Config) -> Setup:
    """The subject (`load_subject`: the zoo's model, or a checkpoint on real data), its parts and features.

    Upstream's protocol: indices extracted on the training images, every accuracy on the test (or
    `eval_dataset`) images, e.g. CIFAR-10 (JPEG) train and the original pixels of CIFAR-10
    test[0:1000]. CIFAR-10 from the shared `cifar10_test_first1000.npz` alone (test images only) is
    split per class, seeded, into a fit part (`fit_fraction`: index extraction, finetuning, CSG
    training) and an eval part (accuracy, essentiality).
    """
    subject = load_subject(cfg.model, cfg.dataset, cfg.data_root, cfg.weights, cfg.scale, cfg.device, cfg.progress,
                           normalize=cfg.normalize if cfg.dataset in CIFAR10 else None,
                           eval_dataset=cfg.eval_dataset, eval_root=cfg.eval_root)
    d = subject.data
    if len(d.classes) < 2:
        raise DataError(d.root or d.dataset, f"has {len(d.classes)} class; a classifier needs at least 2",
                        data.layout(d.dataset))
    test_only = d.dataset == "cifar10" and d.root.is_file() and d.eval_dataset is None
    parts = _test_split_parts(cfg, d) if test_only else _split_parts(cfg, subject)
    if d.dataset in CIFAR10:
        parts["notes"].append(f"inputs normalised with {cfg.normalize} mean/std {d.mean_std}")
    S = Setup(subject, **parts, reference=(cfg.eval_dataset or cfg.dataset) == "cifar10" and cfg.model == "resnet20")
    S.feats_fit, S.feats_eval = features(S.model, "fit", S, cfg), features(S.model, "eval", S, cfg)
    return S


def read_published(cfg: Config, S: Setup) -> dict[int, Indices]:
    """The published index files of `cfg.published_indices` ({n: path}), checked against the model
    and against their key n (each class must list exactly n indices)."""
    out = {}
    for n, path in (cfg.published_indices or {}).items():
        idx = read_indices(resolve_path(path), len(S.classes), S.num_features)
        size = len(idx[0])
        if size != n:
            raise DataError(resolve_path(path), f"lists {size} indices per class, but published_indices names it "
                                                f"for n = {n}", f"{n} indices per class")
        out[n] = idx
    return out


#: Column of the seed's full-test targets (method.SEED_REFERENCE) beside ResNet-20 / CIFAR-10 numbers.
SEED_COLUMN = "seed target, full CIFAR-10 test (shared/data/README.md)"


# ============================================================================ finetuning
def finetuned(S: Setup, indices: Mapping, cfg: Config) -> tuple[nn.Module, pd.DataFrame]:
    """The decomposed model finetuned by `method.finetune` (cached, resumable) and its accuracy per epoch."""
    path = cache.entry(("decompose", "finetune"), "finetune", model=weights_fingerprint(S.model),
                       idx={str(c): v for c, v in indices.items()}, epochs=cfg.finetune_epochs, lr=cfg.lr,
                       batch=cfg.batch_size, version=2, **_data_key(S, cfg))

    def train(checkpoint: cache.Checkpoint) -> dict:
        net, history = method.finetune(S.model, indices, S.train_ds, S.eval_ds, cfg.finetune_epochs, cfg.lr,
                                       cfg.batch_size, cfg.seed, cfg.device, cfg.progress, checkpoint=checkpoint)
        return {"state": {k: v.cpu() for k, v in net.state_dict().items()}, "history": history.to_dict("records")}

    saved = cache.cached(path, train, read_file=_reader("state", "history"),
                         label=f"finetune decomposed model, {cfg.finetune_epochs} epoch(s)")
    net = method.decompose(S.model, indices)
    net.load_state_dict(saved["state"])
    net.eval().to(pick_device(cfg.device))
    before = method.head_accuracy(S.feats_eval, DecomposedHead.from_linear(S.linear, indices))
    hist = pd.DataFrame([{"epoch": 0, "val_acc": before}] + saved["history"])
    table = pd.DataFrame({"epoch": hist["epoch"].astype(int),
                          f"decomposed acc (%) {S.eval_label}": (100 * hist["val_acc"]).round(2)})
    if S.reference and len(next(iter(indices.values()))) == 5:
        seed = method.SEED_REFERENCE
        table[SEED_COLUMN] = [seed["decomposed (n=5)"]] + [
            seed["finetuned, 1 epoch"] if e == 1 else seed["finetuned, best"] for e in table["epoch"][1:]]
    return net, table


# ============================================================================ CSG baseline
@dataclasses.dataclass
class CSGResult:
    """A CSG model, where it came from, its eval-part features and its training history (if trained)."""

    net: CSGNet
    source: str
    feats_eval: Features
    history: pd.DataFrame | None

    @property
    def linear(self) -> nn.Linear:
        return self.net.linear()


def _trained_csg(S: Setup, cfg: Config) -> tuple[CSGNet, pd.DataFrame]:
    """`csg.train_csg` from the run's model on the training part (cached, resumable; its accuracy is
    measured afterwards on the eval part's features, so training validates nothing)."""
    path = cache.entry(("decompose", "csg"), "csg", model=weights_fingerprint(S.model), batch=cfg.batch_size,
                       epochs=cfg.csg_epochs, lr=cfg.csg_lr, l1=cfg.csg_lambda_1, l2=cfg.csg_lambda_2,
                       mult=cfg.csg_gate_lr_mult, **_data_key(S, cfg))

    def train(checkpoint: cache.Checkpoint) -> dict:
        net, history = csg_math.train_csg(S.model, S.train_ds, None, cfg.csg_epochs, cfg.csg_lr, cfg.csg_lambda_1,
                                        cfg.csg_lambda_2, batch_size=cfg.batch_size, seed=cfg.seed, device=cfg.device,
                                        progress=cfg.progress, checkpoint=checkpoint, gate_lr_mult=cfg.csg_gate_lr_mult)
        return {"state": {k: v.cpu() for k, v in net.state_dict().items()}, "gate_scale": net.gate_scale,
                "history": history.to_dict("records")}

    saved = cache.cached(path, train, read_file=_reader("state", "gate_scale", "history"),
                         label=f"train CSG, {cfg.csg_epochs} epoch(s)")
    net = CSGNet(copy.deepcopy(S.model).cpu(), gate_scale=saved["gate_scale"])
    net.load_state_dict(saved["state"])
    return net, pd.DataFrame(saved["history"])


def csg_baseline(S: Setup, cfg: Config) -> CSGResult | None:
    """The CSG model: `cfg.csg_checkpoint` when given, else trained from the run's model (cached,
    resumable); None when the run has no CSG baseline (csg_epochs 0 and no checkpoint)."""
    if not cfg.csg:
        return None
    history = None
    if cfg.csg_checkpoint is not None:
        path = resolve_path(cfg.csg_checkpoint)
        net = files.load_csg_checkpoint(path, cfg.model)
        C, D = net.gates.shape
        if (C, D) != (len(S.classes), S.num_features):
            raise DataError(path, f"gate matrix is {C} x {D}, the model has {len(S.classes)} classes x {S.num_features} features")
        source = f"checkpoint {path.name}"
    else:
        net, history = _trained_csg(S, cfg)
        source = f"trained {cfg.csg_epochs} epoch(s) from the run's model on {S.train_label}"
    net.eval().to(pick_device(cfg.device))
    return CSGResult(net, source, features(net.net, "eval", S, cfg, "CSG"), history)


def csg_index_sets(csg: CSGResult | None, S: Setup, cfg: Config) -> dict[str, Indices]:
    """CSG's index sets (n = cfg.n): largest gates, smallest gates (upstream's legacy), the published file."""
    sets = {}
    if csg is not None:
        sets = {"CSG largest gates": csg_math.csg_indices(csg.net.gates, cfg.n),
                "CSG smallest gates (legacy)": csg_math.csg_indices(csg.net.gates, cfg.n, "smallest")}
    if cfg.csg_index_file is not None:
        sets["CSG published file"] = read_indices(resolve_path(cfg.csg_index_file), len(S.classes), S.num_features)
    return sets


