"""NAD runs: the notebooks' configurations, the images a search reads, and the cached studies.

- `Config` holds the parameters the three NAD notebooks share (the data and the search settings of
  `method.SearchConfig`); `FindPathConfig`, `HitRateConfig` and `SubArchConfig` add each notebook's own.
- `Images` reads a data set's raw images for the search (upstream's augmentation) and the maps.
- `find_paths` is the cached, resumable search on a subject (`netanatomy.cache.cached`); the other
  functions build the notebooks' result tables.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torchvision.transforms.functional import resize, resized_crop

from ..cache import cached, entry
from ..config import boolean, choice, integer, items, mapping, number, optional, param, text
from ..data import DATASETS, raw_image
from ..errors import ParamError, require
from ..models import resolve_layers
from ..runtime import weights_fingerprint
from ..subject import Subject, load_subject
from ..train import predict
from . import method
from .method import (UPSTREAM_BETA, UPSTREAM_CAM_MASK_RATE, UPSTREAM_CROP_SCALE, UPSTREAM_MOSAIC_MASK_RATE,
                     UPSTREAM_N_MOSAICS, PathResult, SearchConfig)

#: Betas of the built-in runs on the concept world (ours: upstream has none for these nets).
BUILTIN_BETA: dict[str, float] = {"small_vgg": 0.1, "small_resnet": 0.1}


def beta_for(model: str, dataset: str, beta: float | None) -> float:
    """`beta` when given, else upstream's for (dataset, model), else the built-in one."""
    if beta is not None:
        return beta
    b = UPSTREAM_BETA.get((dataset, model), BUILTIN_BETA.get(model))
    if b is None:
        raise ParamError("beta", f"no default beta for model {model!r} on {dataset!r}; give beta explicitly")
    return b


# ============================================================================ configurations
@dataclasses.dataclass
class Config(SearchConfig):
    """The parameters every NAD notebook shares: the data and the search settings."""

    dataset: str = param("concept_world", choice(*DATASETS), "concept_world (built-in), imagenet or places365")
    data_root: str | None = param(None, optional(text()), "real data: folder holding train/ and val/")


@dataclasses.dataclass
class OneModelConfig(Config):
    """A NAD run on one classifier."""

    model: str = param("small_vgg", text(), "architecture (models.build name)")
    weights: str | None = param(None, optional(text()), "real data: checkpoint of the trained classifier")

    def weights_for(self, model: str) -> str | None:
        return self.weights


@dataclasses.dataclass
class FindPathConfig(OneModelConfig):
    """nad_findpath: the search, and the path size versus beta."""

    sweep_betas: list[float] = param([0.02, 0.1, 1.0], items(number(0)), "betas of the path-size figure")
    sweep_classes: list[int] = param([0, 1, 2], items(integer(0), unique=True), "classes searched for that figure")


@dataclasses.dataclass
class SubArchConfig(OneModelConfig):
    """nad_subarch: sub-architecture similarity and our agreement score."""

    top_k: int = param(3, integer(1), "nearest classes listed (upstream 3)")
    n_random: int = param(20, integer(1), "random-path draws for the agreement baseline")


@dataclasses.dataclass
class HitRateConfig(Config):
    """nad_hitrate: single-image maps and 2x2 hit rates of several classifiers."""

    beta: float | None = param(None, optional(number(0)), "None: per-model default (`beta_for`)")
    models: list[str] = param(["small_vgg", "small_resnet"], items(text(), unique=True), "architectures compared")
    weights: dict = param({}, mapping(text(), text()), "real data: {model: checkpoint}")
    n_mosaics: int = param(UPSTREAM_N_MOSAICS, integer(1), "2x2 mosaics")
    mask_rate: float = param(UPSTREAM_MOSAIC_MASK_RATE, number(0, 1, lo_open=True),
                             "share of top pixels counted on mosaics")
    cam_mask_rate: float = param(UPSTREAM_CAM_MASK_RATE, number(0, 1, lo_open=True),
                                 "share of top pixels shown on the single image")
    cam_class: int = param(0, integer(0), "class of the single-image example")
    legacy: bool = param(False, boolean(), "upstream's uint8 / strict '>' pixel selection")

    def validate(self) -> None:
        super().validate()
        unknown = sorted(set(self.weights) - set(self.models))
        require(not unknown, "weights", f"names models that are not compared: {unknown}; models: {self.models}")

    def weights_for(self, model: str) -> str | None:
        return self.weights.get(model)

    def search_for(self, model: str) -> "HitRateConfig":
        """The search settings of `model` (its default beta when `beta` is None)."""
        return self.replace(beta=beta_for(model, self.dataset, self.beta))


def subject_for(cfg: OneModelConfig | HitRateConfig, model: str) -> Subject:
    """The classifier `model` of a run with its data (`netanatomy.subject.load_subject`)."""
    return load_subject(model, cfg.dataset, cfg.data_root, cfg.weights_for(model), cfg.scale, cfg.device,
                        cfg.progress)


# ============================================================================ images
@dataclasses.dataclass
class Images:
    """A data set's images as NAD reads them one at a time (a `method.ImageSource`).

    `load(i)` gives image i as a uint8 (3, H, W) tensor of raw pixels, normalised here with `mean` and
    `std`, or as a float tensor taken as already normalised; `targets` holds every image's class.
    """

    targets: np.ndarray
    load: Callable[[int], torch.Tensor]
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of_dataset(cls, ds, mean_std: tuple | None) -> "Images":
        """The raw images of `ds` (`netanatomy.data.raw_image`), normalised with `mean_std` (None: not at all)."""
        mean, std = mean_std if mean_std is not None else ((0.0,) * 3, (1.0,) * 3)
        load = lambda i: torch.from_numpy(np.ascontiguousarray(raw_image(ds, i).transpose(2, 0, 1)))  # noqa: E731
        return cls(_targets(ds), load, torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32))

    @classmethod
    def of_tensors(cls, x: torch.Tensor, y: torch.Tensor) -> "Images":
        """Already normalised float images x (N, 3, H, W) with labels y."""
        return cls(y.cpu().numpy().astype(np.int64), lambda i: x[i], torch.zeros(3), torch.ones(3))

    def __len__(self) -> int:
        return len(self.targets)

    def indices_of(self, c: int) -> np.ndarray:
        return np.flatnonzero(self.targets == c)

    def finish(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 -> normalised float; float images are taken as already normalised."""
        if img.dtype == torch.uint8:
            return (img.float().div_(255) - self.mean.view(3, 1, 1)) / self.std.view(3, 1, 1)
        return img.float()

    def tile(self, i: int, size: int) -> torch.Tensor:
        """Image i resized to size x size (antialiased) and normalised."""
        img = self.load(i)
        if tuple(img.shape[-2:]) != (size, size):
            img = resize(img, [size, size], antialias=True)
        return self.finish(img)

    def batch(self, indices: np.ndarray, gen: torch.Generator, size: int, crop_scale=UPSTREAM_CROP_SCALE,
              flip: bool = True) -> torch.Tensor:
        """Images `indices`, each augmented as upstream's training loader does (`augment`) and normalised."""
        imgs = [augment(self.load(int(i)), gen, size, crop_scale, flip) for i in indices]
        return torch.stack([self.finish(im) for im in imgs])

    def display(self, x: torch.Tensor) -> torch.Tensor:
        """A normalised (3, H, W) image back in [0, 1] for display."""
        return (x * self.std.view(3, 1, 1) + self.mean.view(3, 1, 1)).clamp(0, 1)


def _targets(ds) -> np.ndarray:
    """Class index of every item of a dataset (targets / labels attribute, Subsets resolved)."""
    if isinstance(ds, torch.utils.data.Subset):
        return _targets(ds.dataset)[np.asarray(ds.indices)]
    for attr in ("targets", "labels"):
        if hasattr(ds, attr):
            return np.asarray(getattr(ds, attr), dtype=np.int64)
    return np.asarray([int(ds[i][1]) for i in range(len(ds))], dtype=np.int64)


def crop_params(gen: torch.Generator, height: int, width: int, scale=UPSTREAM_CROP_SCALE,
                ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params drawn from `gen` (top, left, height, width)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=gen).item())
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(1, generator=gen).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, (1,), generator=gen).item())
            j = int(torch.randint(0, width - w + 1, (1,), generator=gen).item())
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def augment(img: torch.Tensor, gen: torch.Generator, size: int, scale=UPSTREAM_CROP_SCALE,
            flip: bool = True) -> torch.Tensor:
    """RandomResizedCrop(size, scale) + RandomHorizontalFlip on one (3, H, W) image, drawn from `gen`
    (upstream tools/dataloader.py, with a per-class generator instead of the global one)."""
    i, j, h, w = crop_params(gen, img.shape[-2], img.shape[-1], scale)
    out = resized_crop(img, i, j, h, w, [size, size], antialias=True)
    if flip and torch.rand(1, generator=gen).item() < 0.5:
        out = out.flip(-1)
    return out


def val_images(subject: Subject) -> Images:
    return Images.of_dataset(subject.val_ds, subject.data.mean_std)


# ============================================================================ the search and its tables
def paths_entry(subject: Subject, cfg: SearchConfig, layers: Sequence[str]) -> Path:
    """Where the search of `subject` by `cfg` on `layers` is cached: keyed by the weights, the data, the
    layers and the search settings (so every notebook with the same search shares it)."""
    return entry(("nad", "paths"), subject.name, method="nad-paths", version=2, layers=list(layers),
                 weights=weights_fingerprint(subject.model), data=subject.data.key(), cfg=cfg.search_fields())


def find_paths(subject: Subject, cfg: SearchConfig, layers: Sequence[str] | str = "nad",
               cache: bool = True) -> PathResult:
    """The NAD paths of `subject` by `cfg`: loaded when this exact search ran before (in any notebook),
    else searched, resuming from the last finished epoch of an interrupted search."""
    names = resolve_layers(subject.model, subject.name, layers)
    path = paths_entry(subject, cfg, names) if cache else None
    images = Images.of_dataset(subject.train_ds, subject.data.mean_std)
    meta = {"model": subject.name, "dataset": subject.dataset, "cache_key": None if path is None else path.stem}

    def compute(checkpoint) -> PathResult:
        return method.search(subject.model, images, names, cfg, subject.input_size, subject.classes,
                             checkpoint=checkpoint, meta=meta)

    return cached(path, compute, load=PathResult.from_dict, dump=PathResult.to_dict)


def sweep_betas(subject: Subject, cfg: SearchConfig, betas: Sequence[float], classes: Sequence[int] | None = None,
                reuse: PathResult | None = None, layers: Sequence[str] | str = "nad") -> pd.DataFrame:
    """Kept-channel fraction per layer (mean over `classes`) for each beta. Each search is cached; a
    beta equal to `reuse`'s takes its rows instead of searching again."""
    rows = []
    for b in betas:
        c = cfg.replace(beta=float(b), classes=list(classes) if classes is not None else cfg.classes)
        if reuse is not None and float(reuse.meta["config"]["beta"]) == float(b) and \
                set(c.classes or reuse.classes) <= set(reuse.classes):
            res = reuse.subset(c.classes or reuse.classes)
        else:
            res = find_paths(subject, c, layers)
        hard = res.hard()
        for li, layer in enumerate(res.layers):
            rows.append({"beta": float(b), "layer": layer, "layer_index": li + 1,
                         "kept_fraction": float(hard[layer].float().mean())})
        rows.append({"beta": float(b), "layer": "all layers", "layer_index": 0,
                     "kept_fraction": float(sum(int(hard[n].sum()) for n in res.layers) /
                                            sum(hard[n].numel() for n in res.layers))})
    return pd.DataFrame(rows)


def path_summary(result: PathResult) -> pd.DataFrame:
    """Per class: kept channels per layer (count and fraction overall) and the last epoch's losses."""
    hard = result.hard()
    last = result.history[result.history["epoch"] == result.history["epoch"].max()].set_index("class") \
        if result.history is not None and len(result.history) else None
    rows = []
    for r, c in enumerate(result.classes):
        kept = sum(int(hard[n][r].sum()) for n in result.layers)
        total = sum(hard[n].shape[1] for n in result.layers)
        row = {"class": result.class_names[c], "kept channels": kept, "of": total, "kept fraction": kept / total}
        if last is not None and c in last.index:
            row.update({"final loss": last.loc[c, "loss"], "final CE+MSE": last.loc[c, "ce"] + last.loc[c, "mse"],
                        "skipped batches": int(result.history.loc[result.history["class"] == c, "skipped"].sum())})
        rows.append(row)
    return pd.DataFrame(rows).set_index("class")


# ============================================================================ maps and hit rates (nad_hitrate)
def subjects_and_paths(cfg: HitRateConfig) -> tuple[dict[str, Subject], dict[str, PathResult]]:
    """For each of `cfg.models`: its subject and its paths (cached search, the model's beta by `beta_for`)."""
    subjects, results = {}, {}
    for m in cfg.models:
        subjects[m] = subject_for(cfg, m)
        results[m] = find_paths(subjects[m], cfg.search_for(m))
    return subjects, results


def models_overview(subjects: Mapping[str, Subject], results: Mapping[str, PathResult]) -> pd.DataFrame:
    """One row per model: accuracy, gated layers, channels, kept fraction, beta, search time."""
    rows = []
    for m, S in subjects.items():
        R = results[m]
        hard = R.hard()
        rows.append({"model": m, "dataset": S.dataset, "val_acc": S.val_acc, "gated layers": len(R.layers),
                     "gated channels": sum(v.shape[1] for v in hard.values()),
                     "kept fraction": sum(int(v.sum()) for v in hard.values()) / sum(v.numel() for v in hard.values()),
                     "beta": R.meta["config"]["beta"], "search seconds": round(R.meta.get("seconds", float("nan")), 1)})
    return pd.DataFrame(rows).set_index("model")


def single_image(subject: Subject, result: PathResult, cfg: HitRateConfig, index: int = 0) -> dict:
    """cam_1x1: validation image `index` of `cfg.cam_class` at the input size; per layer the map and top
    `cfg.cam_mask_rate` pixels with the class path and with the original network."""
    images = val_images(subject)
    idx = images.indices_of(cfg.cam_class)
    require(len(idx) > index, "cam_class", f"class {cfg.cam_class} has {len(idx)} validation images")
    i = int(idx[index])
    x = images.tile(i, subject.input_size).unsqueeze(0)
    learned = method.activation_maps(subject.model, x, result.layers, result.path(cfg.cam_class))
    original = method.activation_maps(subject.model, x, result.layers, None)
    top = lambda maps: {n: method.select_top(v, cfg.cam_mask_rate)[0] for n, v in maps.items()}  # noqa: E731
    return {"image": images.display(x[0]), "class": cfg.cam_class, "index": i, "mask_rate": cfg.cam_mask_rate,
            "path": top(learned), "original": top(original), "path_cam": {n: v[0] for n, v in learned.items()},
            "original_cam": {n: v[0] for n, v in original.items()}}


def random_paths(result: PathResult, seed: int = 0) -> PathResult:
    """A random-path control (ours): per class and layer, as many channels kept as the learned path keeps,
    chosen at random."""
    gen = torch.Generator().manual_seed(seed)
    logits = {}
    for name, v in result.hard().items():
        k = v.sum(1)
        out = torch.full(v.shape, -1.0)
        for r in range(v.shape[0]):
            out[r, torch.randperm(v.shape[1], generator=gen)[:int(k[r])]] = 1.0
        logits[name] = out
    meta = dict(result.meta, control="random paths with the learned per-layer keep counts", control_seed=seed)
    return PathResult(result.layers, result.classes, result.class_names, logits, logits, result.history, meta)


def hit_rate_study(subject: Subject, result: PathResult, n_mosaics: int = 100, mask_rate: float = 0.1,
                   legacy: bool = False, seed: int = 0, n_random: int = 1, progress: bool = True) -> pd.DataFrame:
    """2x2 hit rates per layer of the learned paths and of random-path controls (same per-layer keep
    counts), on `n_mosaics` mosaics of validation images. Long table: model, paths, layer, mosaic, hit."""
    mos = method.make_mosaics(val_images(subject), n_mosaics, subject.input_size, seed, classes=result.classes)
    parts = [method.hit_rates(subject.model, result, mos, mask_rate, legacy, progress=progress).assign(paths="learned")]
    for i in range(n_random):
        ctrl = random_paths(result, seed=seed + 1000 + i)
        parts.append(method.hit_rates(subject.model, ctrl, mos, mask_rate, legacy, progress=progress)
                     .assign(paths="random (same keep fraction)"))
    out = pd.concat(parts, ignore_index=True)
    out.insert(0, "model", subject.name)
    return out


def compare_hit_rates(subjects: Mapping[str, Subject], results: Mapping[str, PathResult],
                      cfg: HitRateConfig) -> pd.DataFrame:
    """`hit_rate_study` for every model on the same mosaics (same seed); one long table."""
    return pd.concat([hit_rate_study(S, results[m], cfg.n_mosaics, cfg.mask_rate, cfg.legacy, cfg.seed,
                                     progress=cfg.progress) for m, S in subjects.items()], ignore_index=True)


def hit_summary(long: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over mosaics per model, paths and layer (std over mosaics, ddof 0 as upstream's numpy)."""
    g = long.groupby(["model", "paths", "layer_index", "layer"], sort=True)["hit"]
    out = g.mean().rename("mean").to_frame()
    out["std"] = g.std(ddof=0)
    out["n_mosaics"] = g.size()
    return out.reset_index()


def deep_layer_hits(summary: pd.DataFrame, n_deep: int = 2) -> pd.DataFrame:
    """Mean hit rate over each model's last `n_deep` gated layers, learned vs random paths."""
    rows = []
    for (model, paths), grp in summary.groupby(["model", "paths"], sort=False):
        deep = grp.sort_values("layer_index").tail(n_deep)
        rows.append({"model": model, "paths": paths, "layers": ", ".join(deep["layer"]),
                     "mean hit rate": float(deep["mean"].mean())})
    return pd.DataFrame(rows).pivot(index="model", columns="paths", values="mean hit rate")


def mosaic_example(subject: Subject, result: PathResult, mosaic_index: int = 0, n_mosaics: int = 100,
                   seed: int = 0, mask_rate: float = 0.1, layer: str | None = None) -> dict:
    """One mosaic of `hit_rate_study` with each quadrant class's map and top pixels at `layer` (the deepest)."""
    images = val_images(subject)
    mos = method.make_mosaics(images, n_mosaics, subject.input_size, seed, classes=result.classes)
    layer = layer or result.layers[-1]
    x = mos.images[mosaic_index:mosaic_index + 1].repeat(4, 1, 1, 1)
    classes = [int(c) for c in mos.classes[mosaic_index]]
    gates = {n: torch.stack([result.path(c)[n] for c in classes]) for n in result.layers}
    cams = method.activation_maps(subject.model, x, [layer], gates)[layer]
    sel = method.select_top(cams, mask_rate)
    return {"image": images.display(x[0]), "cams": cams, "selection": sel, "layer": layer, "mask_rate": mask_rate,
            "hits": [float(method.quadrant_shares(sel[q:q + 1])[0, q]) for q in range(4)],
            "classes": [result.class_names[c] for c in classes], "model": subject.name}


# ============================================================================ similarity (nad_subarch)
def class_probabilities(subject: Subject, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Softmax outputs (N, K) and labels on the validation set (the classifier's confusions)."""
    device = next(subject.model.parameters()).device
    logits, labels = predict(subject.model, subject.val_ds, device=device, amp=False, progress=progress)
    return torch.softmax(logits, 1).numpy(), labels.numpy()


def confusion_neighbours(probs: np.ndarray, labels: np.ndarray, classes: Sequence[int], k: int = 3) -> dict:
    """Per class: top-k predictions (mean softmax over its images), top-k wrong classes, most-mistaken class."""
    out = {}
    preds = probs.argmax(1)
    for c in classes:
        sel = labels == c
        mean = probs[sel].mean(0) if sel.any() else np.zeros(probs.shape[1])
        top = [int(j) for j in np.argsort(-mean, kind="stable")[:k]]
        wrong = [int(j) for j in np.argsort(-mean, kind="stable") if j != c and j in classes][:k]
        counts = np.bincount(preds[sel], minlength=probs.shape[1]).astype(float)
        counts[c] = -1
        counts[[j for j in range(probs.shape[1]) if j not in classes]] = -1
        mistaken = int(np.argmax(counts)) if counts.max() > 0 else wrong[0]
        out[c] = {"top": top, "wrong": wrong, "mistaken": mistaken}
    return out


def similarity_frame(result: PathResult) -> pd.DataFrame:
    """`method.iou_matrix` with class names."""
    names = [result.class_names[c] for c in result.classes]
    return pd.DataFrame(method.iou_matrix(result), index=pd.Index(names, name="class"), columns=names)


def similar_names(result: PathResult, k: int) -> list[list[str]]:
    """Per class (row), its k most similar sub-architectures as 'name (IoU)'."""
    sim = method.iou_matrix(result)
    top = method.top_similar(sim, k)
    return [[f"{result.class_names[result.classes[j]]} ({sim[r, j]:.2f})" for j in top[r]]
            for r in range(len(result.classes))]


def top3_table(result: PathResult, neighbours: dict, k: int = 3) -> pd.DataFrame:
    """Each class's top-k most similar sub-architectures beside the classifier's top-k predictions."""
    names = result.class_names
    rows = []
    for c, similar in zip(result.classes, similar_names(result, k)):
        row = {"class": names[c], **{f"similar {i + 1}": s for i, s in enumerate(similar)}}
        row.update({f"predicted {i + 1}": names[j] for i, j in enumerate(neighbours[c]["top"][:k])})
        rows.append(row)
    return pd.DataFrame(rows).set_index("class")


def agreement(result: PathResult, neighbours: dict, k: int = 3) -> dict:
    """Our agreement score (not in the paper): how often the classifier's confusions fall among the k
    most similar sub-architectures. `mistaken_in_topk`: share of classes whose most-mistaken class is
    among its k most similar; `overlap_at_k`: mean |top-k wrong classes & top-k similar| / k."""
    top = method.top_similar(method.iou_matrix(result), k)
    hit, overlap = [], []
    for r, c in enumerate(result.classes):
        similar = {result.classes[j] for j in top[r]}
        hit.append(float(neighbours[c]["mistaken"] in similar))
        overlap.append(len(similar & set(neighbours[c]["wrong"][:k])) / max(1, top.shape[1]))
    return {"mistaken_in_topk": float(np.mean(hit)), "overlap_at_k": float(np.mean(overlap))}


def agreement_table(result: PathResult, neighbours: dict, k: int = 3, n_random: int = 20,
                    seed: int = 0) -> pd.DataFrame:
    """Agreement score of the learned paths against random-path controls (mean and std over draws) and chance."""
    learned = agreement(result, neighbours, k)
    draws = [agreement(random_paths(result, seed + i), neighbours, k) for i in range(n_random)]
    K = len(result.classes)
    chance = min(k, K - 1) / max(1, K - 1)
    rows = []
    for key in ("mistaken_in_topk", "overlap_at_k"):
        vals = np.array([d[key] for d in draws])
        rows.append({"score": key, "learned paths": learned[key], "random paths (mean)": vals.mean(),
                     "random paths (std)": vals.std(), "chance": chance})
    return pd.DataFrame(rows).set_index("score")


def explorer_table(result: PathResult, neighbours: dict, k: int = 3) -> pd.DataFrame:
    """The explorer's static form: per class, kept channels per layer and its nearest classes."""
    kf = result.keep_fraction()
    out = kf.round(2).copy()
    out.columns = [f"kept {c}" for c in kf.columns]
    out["nearest sub-architectures"] = [", ".join(s) for s in similar_names(result, k)]
    out["most mistaken for"] = [result.class_names[neighbours[c]["mistaken"]] for c in result.classes]
    return out
