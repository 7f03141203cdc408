"""The decomposition notebook's runs: its checked `Config`, the `Setup` (the subject with its fit, eval
and training parts and their pooled features), index and CSG checkpoint files, and the studies behind
each table (k sweep, accuracy, finetuning, CSG baseline, essentiality, mutual information, head size).

Every cached result goes through `netanatomy.cache`: the pooled features of each part (keyed by the
model's weights and the data), the finetuned decomposed model and the trained CSG model (both
resumable through `train.fit`'s checkpoint).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from .. import cache, data, models
from ..config import RunConfig, boolean, choice, integer, items, mapping, number, optional, param, text
from ..errors import DataError, require
from ..runtime import atomic_write_text, pick_device, resolve_path, weights_fingerprint
from ..subject import Data, Subject, load_subject
from . import method
from .method import CSGNet, DecomposedHead, Features, Indices, check_indices, check_k_n


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
    data_root: str | None = param(None, optional(text()), "real data: a folder or the CIFAR-10 .npz")
    normalize: str = param("imagenet", choice("imagenet", "cifar10"), "CIFAR-10 input normalisation")
    k: int = param(5, integer(1), "top-k features per image in the frequency histogram")
    n: int = param(5, integer(1), "influential features per class |S_c|")
    k_grid: list = param([5, 10, 15, 20, 25, 30], items(integer(1)), "k values of the sweep")
    n_grid: list = param([5, 10, 20], items(integer(1)), "n values of the sweep and the MI table")
    published_indices: dict | None = param(None, optional(mapping(_index_count, text())), "{n: index file}")
    csg_checkpoint: str | None = param(None, optional(text()), "CSG checkpoint (None: train CSG)")
    csg_index_file: str | None = param(None, optional(text()), "published CSG index file")
    csg_epochs: int = param(2, integer(0), "CSG training epochs")
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
    fit_fraction: float = param(0.5, number(0, 1, lo_open=True, hi_open=True), "test-only data: fit share")
    max_train_images: int | None = param(None, optional(integer(1)), "cap on finetuning / CSG images")
    max_fit_images: int | None = param(None, optional(integer(1)), "cap on index-extraction images")

    def validate(self) -> None:
        require(self.dataset == "concept_world" or self.weights is not None, "weights",
                f"a checkpoint path is needed for dataset {self.dataset!r} (only the built-in data has trained models)")
        require(self.csg_checkpoint is not None or self.csg_epochs >= 1, "csg_epochs",
                "must be >= 1 when no csg_checkpoint is given")


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


def _split_parts(cfg: Config, subject: Subject) -> dict:
    """Fit and training parts from the training split, eval part = the validation (CIFAR-10: test) split."""
    d = subject.data
    fit_ds = _subset(d.train, np.arange(len(d.train)), cfg.max_fit_images, cfg.seed + 1)
    train_ds = _subset(d.train_aug, np.arange(len(d.train_aug)), cfg.max_train_images, cfg.seed)
    name = "concept world" if d.world is not None else d.label
    eval_name = "test" if d.dataset == "cifar10" else "val"
    notes = []
    if subject.val_acc is not None:
        notes.append(f"built-in {subject.name} from the zoo (scale {cfg.scale!r}), validation accuracy "
                     f"{100 * subject.val_acc:.2f} %")
    if len(fit_ds) < len(d.train):
        notes.append(f"indices are extracted on a seeded subset of {len(fit_ds)} of the {len(d.train)} "
                     "training images (max_fit_images)")
    if len(train_ds) < len(d.train_aug):
        notes.append(f"finetuning and CSG training use a seeded subset of {len(train_ds)} of the "
                     f"{len(d.train_aug)} training images (max_train_images)")
    return dict(fit_ds=fit_ds, eval_ds=d.val, train_ds=train_ds, fit_label=f"{name} train ({len(fit_ds)} images)",
                eval_label=f"{name} {eval_name} ({len(d.val)} images)", notes=notes)


def _test_split_parts(cfg: Config, d: Data) -> dict:
    """Test images only (the shared CIFAR-10 .npz): split per class, seeded, into a fit and an eval part."""
    full = d.val
    fit_pos, eval_pos = data.split_indices(len(full), fraction=cfg.fit_fraction, seed=cfg.seed, labels=full.targets)
    fit_ds, eval_ds = data.Subset(full, fit_pos), data.Subset(full, eval_pos)
    base = f"CIFAR-10 test[0:{len(full)}]"
    note = (f"only the first {len(full)} CIFAR-10 test images are available: they are split per class "
            f"(seed {cfg.seed}) into a fit part ({len(fit_ds)}: index extraction, finetuning, CSG training) "
            f"and an eval part ({len(eval_ds)}: every accuracy); numbers are '{base}', not the full test set")
    return dict(fit_ds=fit_ds, eval_ds=eval_ds, train_ds=_subset(d.split("val", augment=True), fit_pos,
                                                                 cfg.max_train_images, cfg.seed),
                fit_label=f"{base} fit part ({len(fit_ds)} images)", eval_label=f"{base} eval part ({len(eval_ds)} images)",
                all_label=f"{base} all ({len(full)} images)", notes=[note])


def _data_key(S: Setup, cfg: Config) -> dict:
    """What decides the images of every part (for cache keys)."""
    return {"data": S.subject.data.key(), "fit_fraction": cfg.fit_fraction, "seed": cfg.seed,
            "max_fit_images": cfg.max_fit_images, "max_train_images": cfg.max_train_images}


def features(model: nn.Module, part: str, S: Setup, cfg: Config) -> Features:
    """Pooled features of `model` over part `part` ('fit' or 'eval') of the setup (cached)."""
    ds = {"fit": S.fit_ds, "eval": S.eval_ds}[part]
    path = cache.entry(("decompose", "features"), part, model=weights_fingerprint(model), **_data_key(S, cfg))
    return cache.cached(path, lambda _: method.extract_features(model, ds, device=cfg.device, progress=cfg.progress),
                        load=lambda saved: Features(**saved), dump=dataclasses.asdict)


def setup(cfg: Config) -> Setup:
    """The subject (`load_subject`: the zoo's model, or a checkpoint on real data), its parts and features.

    CIFAR-10 from the shared `cifar10_test_first1000.npz` (test images only) is split per class,
    seeded, into a fit part (`fit_fraction`: index extraction, finetuning, CSG training) and an
    eval part (accuracy, essentiality); other data use the training and validation splits.
    """
    subject = load_subject(cfg.model, cfg.dataset, cfg.data_root, cfg.weights, cfg.scale, cfg.device, cfg.progress,
                           normalize=cfg.normalize if cfg.dataset == "cifar10" else None)
    d = subject.data
    test_only = d.dataset == "cifar10" and d.root.is_file()
    parts = _test_split_parts(cfg, d) if test_only else _split_parts(cfg, subject)
    if d.dataset == "cifar10":
        parts["notes"].append(f"inputs normalised with {cfg.normalize} mean/std {d.mean_std}")
    S = Setup(subject, **parts, reference=cfg.dataset == "cifar10" and cfg.model == "resnet20")
    S.feats_fit, S.feats_eval = features(S.model, "fit", S, cfg), features(S.model, "eval", S, cfg)
    check_k_n(cfg.k, cfg.n, S.num_features)
    for n in cfg.n_grid:
        check_k_n(None, n, S.num_features)
    for k in cfg.k_grid:
        check_k_n(k, None, S.num_features)
    return S


# ============================================================================ files
def read_indices(path: str | Path, num_classes: int | None = None, num_features: int | None = None) -> Indices:
    """Read an index file in the upstream JSON layout {"0": [i1, ...], ...} (checked against the model)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "index file not found", 'a JSON file {"0": [i1, ...], ...}')
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"is not valid JSON ({exc})") from exc
    return check_indices(obj, num_classes, num_features, where=str(path))


def write_indices(indices: Mapping, path: str | Path) -> Path:
    """Write index sets in the upstream JSON layout {"0": [i1, ...], ...} (atomically)."""
    clean = check_indices(indices, equal_sizes=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps({str(c): v for c, v in clean.items()}))


def read_published(cfg: Config, S: Setup) -> dict[int, Indices]:
    """The published index files of `cfg.published_indices` ({n: path}), checked against the model."""
    return {n: read_indices(resolve_path(path), len(S.classes), S.num_features)
            for n, path in (cfg.published_indices or {}).items()}


def load_csg_checkpoint(path: str | Path, model_name: str = "resnet20") -> CSGNet:
    """A CSG checkpoint (upstream layout: `model_state_dict` with the C x D `csg` gate matrix) as a CSGNet.

    The upstream file holds numpy scalars, so it is read with pickle allowed: use trusted copies only.
    """
    obj = models.read_checkpoint(path, trusted=True)
    state = obj.get("model_state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping):
        raise DataError(path, "holds no state dict", "a dict with model_state_dict (incl. the csg gate matrix)")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    gate_keys = [k for k in state if k == "csg" or k.endswith(".csg")]
    if not gate_keys:
        raise DataError(path, "has no CSG gate matrix ('csg' key)", "model_state_dict['csg'] of shape (C, D)")
    gates = state.pop(gate_keys[0])
    linear = state.get("linear.weight", state.get("fc.weight"))
    if linear is None:
        raise DataError(path, "has no final linear layer (linear.weight / fc.weight)")
    model = models.build(model_name, int(linear.shape[0]))
    models.load_weights(model, state, where=str(path))
    return CSGNet(model, torch.as_tensor(gates).float()).eval()


# ============================================================================ index sets and accuracy
def named_index_sets(ours: Indices, published: Mapping[int, Indices], cfg: Config) -> dict[str, Indices]:
    """Our index sets and the published ones, named for tables."""
    return {f"ours (k={cfg.k}, n={cfg.n})": ours} | {f"published (n={m})": idx for m, idx in published.items()}


def overlap(a: Mapping, b: Mapping) -> pd.DataFrame:
    """Per class: |S_a & S_b| and the Jaccard index of two index-set collections."""
    a, b = check_indices(a, equal_sizes=False), check_indices(b, equal_sizes=False)
    rows = []
    for c in a:
        sa, sb = set(a[c]), set(b.get(c, []))
        rows.append({"class": c, "shared": len(sa & sb), "jaccard": len(sa & sb) / max(len(sa | sb), 1)})
    return pd.DataFrame(rows)


def index_table(index_sets: Mapping[str, Mapping], classes: Sequence[str]) -> pd.DataFrame:
    """Classes x methods: each method's feature indices per class."""
    return pd.DataFrame({name: [", ".join(map(str, idx[c])) for c in range(len(classes))]
                         for name, idx in index_sets.items()},
                        index=pd.Index(list(classes), name="class"))


def k_sweep(S: Setup, cfg: Config) -> pd.DataFrame:
    """Decomposed accuracy (%) on the eval part of indices extracted on the fit part, for each k and n."""
    linear = copy.deepcopy(S.linear).float().cpu()
    rows = []
    for n in cfg.n_grid:
        for k in cfg.k_grid:
            idx, _ = method.influential_indices(S.feats_fit.features, S.feats_fit.labels, len(S.classes), k, n)
            rows.append({"n": n, "k": k, "decomposed acc (%)": 100 * method.head_accuracy(
                S.feats_eval, DecomposedHead.from_linear(linear, idx))})
    return pd.DataFrame(rows)


def k_sweep_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """The k sweep as k x n (accuracy rounded to 0.01)."""
    return sweep.pivot(index="k", columns="n", values="decomposed acc (%)").round(2)


def accuracy_table(S: Setup, index_sets: Mapping[str, Mapping]) -> pd.DataFrame:
    """Original and decomposed accuracy (%) on the eval and fit parts (and on both together when they
    are one test set split in two), beside the seed's full-test numbers for ResNet-20 / CIFAR-10."""
    lin = copy.deepcopy(S.linear).float().cpu()
    parts = {S.eval_label: S.feats_eval, S.fit_label: S.feats_fit}
    if S.all_label:
        parts[S.all_label] = Features.concat([S.feats_fit, S.feats_eval])
    heads = {"original": lin} | {f"decomposed: {name}": DecomposedHead.from_linear(lin, idx)
                                 for name, idx in index_sets.items()}
    seed = method.SEED_REFERENCE
    rows = []
    for name, head in heads.items():
        row = {"model": name, "head weights": head.weight.numel()}
        row |= {f"acc (%) {label}": round(100 * method.head_accuracy(f, head), 2) for label, f in parts.items()}
        if S.reference:
            n = head.indices.shape[1] if isinstance(head, DecomposedHead) else None
            row["seed (full CIFAR-10 test)"] = (seed["original"] if n is None else
                                                seed["decomposed (n=5)"] if n == 5 else "-")
        rows.append(row)
    return pd.DataFrame(rows)


def head_size_table(num_classes: int, num_features: int, ns: Sequence[int]) -> pd.DataFrame:
    """Weights (and 2-per-multiply-add FLOPs) of the full linear head versus decomposed heads."""
    rows = [{"head": f"full linear (C x D = {num_classes} x {num_features})", "weights": num_classes * num_features,
             "biases": num_classes, "FLOPs per image": 2 * num_classes * num_features}]
    for n in ns:
        rows.append({"head": f"decomposed (C x n = {num_classes} x {n})", "weights": num_classes * n,
                     "biases": num_classes, "FLOPs per image": 2 * num_classes * n})
    df = pd.DataFrame(rows)
    df["fraction of full"] = (df["weights"] / (num_classes * num_features)).round(4)
    return df


# ============================================================================ finetuning
def finetuned(S: Setup, indices: Mapping, cfg: Config) -> tuple[nn.Module, pd.DataFrame]:
    """The decomposed model finetuned by `method.finetune` (cached, resumable) and its accuracy per epoch."""
    path = cache.entry(("decompose", "finetune"), "finetune", model=weights_fingerprint(S.model),
                       idx={str(c): v for c, v in indices.items()}, epochs=cfg.finetune_epochs, lr=cfg.lr,
                       batch=cfg.batch_size, **_data_key(S, cfg))

    def train(checkpoint: cache.Checkpoint) -> dict:
        net, history = method.finetune(S.model, indices, S.train_ds, S.eval_ds, cfg.finetune_epochs, cfg.lr,
                                       cfg.batch_size, cfg.seed, cfg.device, cfg.progress, checkpoint=checkpoint)
        return {"state": {k: v.cpu() for k, v in net.state_dict().items()}, "history": history.to_dict("records")}

    saved = cache.cached(path, train)
    net = method.decompose(S.model, indices)
    net.load_state_dict(saved["state"])
    net.eval().to(pick_device(cfg.device))
    hist = pd.DataFrame(saved["history"])
    table = pd.DataFrame({"epoch": hist["epoch"].astype(int),
                          f"decomposed acc (%) {S.eval_label}": (100 * hist["val_acc"]).round(2)})
    if S.reference:
        seed = method.SEED_REFERENCE
        table["seed (full CIFAR-10 test)"] = [seed["decomposed (n=5)"]] + [
            seed["finetuned, 1 epoch"] if e == 1 else seed["finetuned, best"] for e in table["epoch"][1:]]
    return net, table


# ============================================================================ CSG baseline
@dataclasses.dataclass
class CSGResult:
    """A CSG model, where it came from, its fit- and eval-part features and its training history (if trained)."""

    net: CSGNet
    source: str
    feats_eval: Features
    feats_fit: Features
    history: pd.DataFrame | None

    @property
    def linear(self) -> nn.Linear:
        return self.net.linear()


def _trained_csg(S: Setup, cfg: Config) -> tuple[CSGNet, pd.DataFrame]:
    """`method.train_csg` from the run's model on the training part (cached, resumable)."""
    path = cache.entry(("decompose", "csg"), "csg", model=weights_fingerprint(S.model), batch=cfg.batch_size,
                       epochs=cfg.csg_epochs, lr=cfg.csg_lr, l1=cfg.csg_lambda_1, l2=cfg.csg_lambda_2,
                       mult=cfg.csg_gate_lr_mult, **_data_key(S, cfg))

    def train(checkpoint: cache.Checkpoint) -> dict:
        net, history = method.train_csg(S.model, S.train_ds, S.eval_ds, cfg.csg_epochs, cfg.csg_lr, cfg.csg_lambda_1,
                                        cfg.csg_lambda_2, batch_size=cfg.batch_size, seed=cfg.seed, device=cfg.device,
                                        progress=cfg.progress, checkpoint=checkpoint, gate_lr_mult=cfg.csg_gate_lr_mult)
        return {"state": {k: v.cpu() for k, v in net.state_dict().items()}, "gate_scale": net.gate_scale,
                "history": history.to_dict("records")}

    saved = cache.cached(path, train)
    net = CSGNet(copy.deepcopy(S.model).cpu(), gate_scale=saved["gate_scale"])
    net.load_state_dict(saved["state"])
    return net, pd.DataFrame(saved["history"])


def csg_baseline(S: Setup, cfg: Config) -> CSGResult:
    """The CSG model: `cfg.csg_checkpoint` when given, else trained from the run's model (cached, resumable)."""
    history = None
    if cfg.csg_checkpoint is not None:
        path = resolve_path(cfg.csg_checkpoint)
        net = load_csg_checkpoint(path, cfg.model)
        C, D = net.gates.shape
        if (C, D) != (len(S.classes), S.num_features):
            raise DataError(path, f"gate matrix is {C} x {D}, the model has {len(S.classes)} classes x {S.num_features} features")
        source = f"checkpoint {path.name}"
    else:
        net, history = _trained_csg(S, cfg)
        source = f"trained {cfg.csg_epochs} epoch(s) from the run's model on {S.fit_label}"
    net.eval().to(pick_device(cfg.device))
    return CSGResult(net, source, features(net.net, "eval", S, cfg), features(net.net, "fit", S, cfg), history)


def csg_index_sets(csg: CSGResult, S: Setup, cfg: Config) -> dict[str, Indices]:
    """CSG's index sets (n = cfg.n): largest gates, smallest gates (upstream's legacy), the published file."""
    sets = {"CSG largest gates": method.csg_indices(csg.net.gates, cfg.n),
            "CSG smallest gates (legacy)": method.csg_indices(csg.net.gates, cfg.n, "smallest")}
    if cfg.csg_index_file is not None:
        sets["CSG published file"] = read_indices(resolve_path(cfg.csg_index_file), len(S.classes), S.num_features)
    return sets


# ============================================================================ essentiality
def essentiality_table(runs: Mapping[str, tuple[Features, nn.Linear, Mapping]], mode: str = "replace",
                       scale: float = 1.0, seed: int = 0, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Long table over methods x {influential, non_influential} x classes (same seed for every run)."""
    parts = []
    for name, (feats, linear, idx) in runs.items():
        for where in ("influential", "non_influential"):
            df = method.essentiality(feats, linear, idx, where, mode, scale, seed, class_names=class_names)
            df.insert(0, "noise at", where.replace("_", "-"))
            df.insert(0, "method", name)
            parts.append(df)
    return pd.concat(parts, ignore_index=True)


def essentiality_study(S: Setup, csg: CSGResult, ours: Indices, published: Mapping[int, Indices],
                       csg_sets: Mapping[str, Indices], cfg: Config) -> pd.DataFrame:
    """Essentiality per class of our indices, CSG's largest gates, the published n = cfg.n file (if
    any) and CSG's smallest gates (legacy), each on its own model's eval-part features."""
    runs = {f"ours (k={cfg.k}, n={cfg.n})": (S.feats_eval, S.linear, ours),
            f"CSG largest gates (n={cfg.n})": (csg.feats_eval, csg.linear, csg_sets["CSG largest gates"])}
    if cfg.n in published:
        runs[f"published (n={cfg.n})"] = (S.feats_eval, S.linear, published[cfg.n])
    runs["CSG smallest gates (legacy)"] = (csg.feats_eval, csg.linear, csg_sets["CSG smallest gates (legacy)"])
    return essentiality_table(runs, cfg.noise, cfg.noise_scale, cfg.seed, S.classes)


def essentiality_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (%) clean and with noise, per method and noise location (all classes together)."""
    g = table.groupby(["method", "noise at"], sort=False)[["images", "correct clean", "correct with noise"]].sum()
    return pd.DataFrame({"clean acc (%)": 100 * g["correct clean"] / g["images"],
                         "acc with noise (%)": 100 * g["correct with noise"] / g["images"]}).round(2)


# ============================================================================ mutual information
MI_COLUMNS = {True: "MI incl. self-pairs (upstream)", False: "MI distinct pairs"}


def mi_table(index_sets: Mapping[str, Mapping], num_features: int) -> pd.DataFrame:
    """MI of each named index-set collection under both conventions."""
    rows = []
    for name, idx in index_sets.items():
        n = len(next(iter(check_indices(idx, equal_sizes=False).values())))
        rows.append({"indices": name, "n": n} | {column: method.mean_mutual_information(idx, num_features, self_pairs)
                                                 for self_pairs, column in MI_COLUMNS.items()})
    return pd.DataFrame(rows)


def mi_over_n(S: Setup, csg: CSGResult | None, cfg: Config, published: Mapping[int, Indices] | None = None,
              csg_file: Indices | None = None) -> pd.DataFrame:
    """MI (both conventions) for n in cfg.n_grid and cfg.n: ours, CSG largest gates, CSG smallest
    (legacy), the published files, and the published CSG file (when given)."""
    sets: dict[str, Mapping] = {}
    for n in sorted(set(cfg.n_grid) | {cfg.n}):
        sets[f"ours (k={cfg.k}, n={n})"], _ = method.influential_indices(
            S.feats_fit.features, S.feats_fit.labels, len(S.classes), cfg.k, n)
        if csg is not None:
            sets[f"CSG largest gates (n={n})"] = method.csg_indices(csg.net.gates, n, "largest")
            sets[f"CSG smallest gates, legacy (n={n})"] = method.csg_indices(csg.net.gates, n, "smallest")
        if published and n in published:
            sets[f"published ours (n={n})"] = published[n]
    if csg_file is not None:
        sets[f"CSG published file (legacy, n={len(csg_file[0])})"] = csg_file
    df = mi_table(sets, S.num_features)
    df["method"] = ["CSG" if "CSG" in name else "ours" for name in df["indices"]]
    return df.sort_values(["n", "method", "indices"], kind="stable").reset_index(drop=True)
