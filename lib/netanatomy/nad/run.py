"""NAD runs: the notebooks' configurations, the images a search reads, and the cached studies.

- `Config` holds the parameters the three NAD notebooks share (the data and the search settings of
  `method.SearchConfig`); `FindPathConfig`, `HitRateConfig` and `SubArchConfig` add each notebook's own.
- `val_images` / `images.Images` read a data set's raw images for the search and the maps.
- `find_paths` is the cached, resumable search on a subject (`netanatomy.cache.cached`), shared by the
  three notebooks (same subject and search settings, same file); `seeded_paths` runs it for each search
  seed. The other functions build the notebooks' result tables, and `hit_verdicts` / `agreement_table`
  decide the claims by 95 % intervals (`netanatomy.stats`) over an honest unit of replication: the
  mosaics (or classes) for one fixed search, the search seeds across searches.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .. import distributed
from ..cache import cached, entry
from ..config import boolean, choice, integer, items, mapping, number, optional, param, text
from ..data import DATASETS
from ..errors import ParamError, require
from ..models import resolve_layers
from ..runtime import weights_fingerprint
from ..stats import mean_interval, paired_interval
from ..subject import Subject, load_subject
from ..train import predict
from . import method
from .images import Images
from .method import (UPSTREAM_BETA, UPSTREAM_CAM_MASK_RATE, UPSTREAM_MOSAIC_MASK_RATE, UPSTREAM_N_MOSAICS,
                     PathResult, SearchConfig)

#: Betas of the built-in runs on the concept world (ours: upstream has none for these nets).
BUILTIN_BETA: dict[str, float] = {"small_vgg": 0.1, "small_resnet": 0.1}
#: Betas of the published CIFAR-10 ResNets (ours, chosen by the beta sweeps of nad_findpath.cifar10_resnet20 /
#: _resnet56: at 0.5 the paths keep about 45 % of the gated channels and every class keeps some in each
#: deepest layer; at 1.0 those layers keep 2-5 %).
CIFAR_BETA: dict[tuple[str, str], float] = {("cifar10_jpeg", "resnet20"): 0.5, ("cifar10_jpeg", "resnet56"): 0.5}
#: The verdicts of nad_hitrate use the mean hit rate of each model's deepest gated layers (ours).
DEEP_LAYERS = 2
CHANCE = 0.25
LEARNED, RANDOM = "learned", "random (same keep counts)"


def beta_for(model: str, dataset: str, beta: float | None) -> float:
    """`beta` when given, else upstream's for (dataset, model), else ours for CIFAR-10, else the built-in one."""
    if beta is not None:
        return beta
    b = UPSTREAM_BETA.get((dataset, model), CIFAR_BETA.get((dataset, model), BUILTIN_BETA.get(model)))
    if b is None:
        raise ParamError("beta", f"no default beta for model {model!r} on {dataset!r}; give beta explicitly")
    return b


# ============================================================================ configurations
@dataclasses.dataclass
class Config(SearchConfig):
    """The parameters every NAD notebook shares: the data and the search settings."""

    dataset: str = param("concept_world", choice(*DATASETS),
                         "concept_world (built-in), imagenet, places365 or cifar10_jpeg")
    data_root: str | None = param(None, optional(text()), "real data: folder holding train/ and val/")
    normalize: str | None = param(None, optional(choice("imagenet", "places365", "cifar10")),
                                  "input mean/std: None for the data set's own, else that data set's")
    eval_dataset: str | None = param(None, optional(choice(*DATASETS)),
                                     "the validation images from another source of the same classes (None: dataset's)")
    eval_root: str | None = param(None, optional(text()), "where eval_dataset lies")

    def searched(self, num_classes: int) -> list[int]:
        """The classes searched on a data set of `num_classes` classes."""
        return list(range(num_classes)) if self.classes is None else list(self.classes)

    def check_data(self, num_classes: int) -> None:
        """The checks that need the data's class count (run once the subject is loaded, before any search)."""
        bad = [c for c in self.classes or [] if c >= num_classes]
        require(not bad, "classes", f"class indices {bad} are out of range; the data set has {num_classes} classes")


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

    def check_data(self, num_classes: int) -> None:
        super().check_data(num_classes)
        bad = [c for c in self.sweep_classes if c >= num_classes]
        require(not bad, "sweep_classes", f"class indices {bad} are out of range; the data set has {num_classes} classes")


@dataclasses.dataclass
class SeedsConfig(Config):
    """A run that repeats the search with several seeds (the unit of replication across searches)."""

    search_seeds: int = param(1, integer(1, 50), "searches with seeds seed, seed + 1, ... (verdicts over seeds need 2)")
    n_random: int = param(20, integer(1, 1000), "random-path draws per search seed (the control)")

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.search_seeds)]


@dataclasses.dataclass
class SubArchConfig(SeedsConfig, OneModelConfig):
    """nad_subarch: sub-architecture similarity and our agreement score."""

    top_k: int = param(3, integer(1), "nearest classes listed (upstream 3)")

    def check_data(self, num_classes: int) -> None:
        super().check_data(num_classes)
        k = len(self.searched(num_classes))
        require(k >= 3, "classes", f"similar sub-architectures need at least 3 searched classes, got {k}")
        require(self.top_k <= k - 2, "top_k", f"must be in [1, {k - 2}] with {k} searched classes (with {k - 1} "
                                              f"every other class is among the top_k and agreement is trivially "
                                              f"100 %), got {self.top_k}")


@dataclasses.dataclass
class HitRateConfig(SeedsConfig):
    """nad_hitrate: single-image maps and 2x2 hit rates of several classifiers."""

    beta: float | None = param(None, optional(number(0)), "None: per-model default (`beta_for`)")
    models: list[str] = param(["small_vgg", "small_resnet"], items(text(), unique=True), "architectures compared")
    weights: dict = param({}, mapping(text(), text()), "real data: {model: checkpoint}")
    n_mosaics: int = param(UPSTREAM_N_MOSAICS, integer(2), "2x2 mosaics")
    mosaic_input: str = param("resized", choice("resized", "full"),
                              "resized: the 2T mosaic resized to T as upstream; full: fed at 2T (ours)")
    mask_rate: float = param(UPSTREAM_MOSAIC_MASK_RATE, number(0, 1, lo_open=True),
                             "share of top pixels counted on mosaics")
    cam_mask_rate: float = param(UPSTREAM_CAM_MASK_RATE, number(0, 1, lo_open=True),
                                 "share of top pixels shown on the single image")
    cam_class: int = param(0, integer(0), "class of the single-image example")
    legacy: bool = param(False, boolean(), "upstream's uint8 / strict '>' pixel selection")
    n_random: int = param(1, integer(1, 1000), "random-path draws per search seed (the control)")

    def validate(self) -> None:
        super().validate()
        unknown = sorted(set(self.weights) - set(self.models))
        require(not unknown, "weights", f"names models that are not compared: {unknown}; models: {self.models}")

    def check_data(self, num_classes: int) -> None:
        super().check_data(num_classes)
        searched = self.searched(num_classes)
        require(len(searched) >= 4, "classes", f"2x2 mosaics need at least 4 searched classes, got {len(searched)}")
        require(self.cam_class in searched, "cam_class",
                f"must be a searched class index (0 to {num_classes - 1}, among classes), got {self.cam_class}")

    def weights_for(self, model: str) -> str | None:
        return self.weights.get(model)

    def search_for(self, model: str) -> "HitRateConfig":
        """The search settings of `model` (its default beta when `beta` is None)."""
        return self.replace(beta=beta_for(model, self.dataset, self.beta))


def subject_for(cfg: OneModelConfig | HitRateConfig, model: str) -> Subject:
    """The classifier `model` of a run with its data (`netanatomy.subject.load_subject`: real data without
    weights is refused), the run's parameters checked against its classes before any search."""
    subject = load_subject(model, cfg.dataset, cfg.data_root, cfg.weights_for(model), cfg.scale, cfg.device,
                           cfg.progress, normalize=cfg.normalize, eval_dataset=cfg.eval_dataset,
                           eval_root=cfg.eval_root)
    cfg.check_data(len(subject.classes))
    return subject


# ============================================================================ the search and its tables
def val_images(subject: Subject) -> Images:
    return Images.of_dataset(subject.val_ds, subject.data.mean_std)


def paths_entry(subject: Subject, cfg: SearchConfig, layers: Sequence[str]) -> Path:
    """Where the search of `subject` by `cfg` on `layers` is cached: keyed by the weights, the data, the
    layers and the search settings (so every notebook with the same search shares it)."""
    return entry(("nad", "paths"), subject.name, method="nad-paths", version=3, layers=list(layers),
                 weights=weights_fingerprint(subject.model), data=subject.data.key(), cfg=cfg.search_fields())


def find_paths(subject: Subject, cfg: SearchConfig, layers: Sequence[str] | str = "nad",
               cache: bool = True) -> PathResult:
    """The NAD paths of `subject` by `cfg`: loaded when this exact search ran before (in any notebook),
    else searched, resuming from the last finished epoch of an interrupted search (a damaged result or
    checkpoint file is set aside and searched again)."""
    names = resolve_layers(subject.model, subject.name, layers)
    path = paths_entry(subject, cfg, names) if cache else None
    images = Images.of_dataset(subject.train_ds, subject.data.mean_std)
    meta = {"model": subject.name, "dataset": subject.dataset, "cache_key": None if path is None else path.stem}

    def compute(checkpoint) -> PathResult:
        if distributed.world()[1] > 1:
            return _sharded_search(subject, images, names, cfg, checkpoint, meta)
        return method.search(subject.model, images, names, cfg, subject.input_size, subject.classes,
                             checkpoint=checkpoint, meta=meta)

    label = f"NAD search {subject.name} beta {cfg.beta:g} seed {cfg.seed}" + \
        ("" if cfg.classes is None else f" classes {cfg.classes}")
    return cached(path, compute, load=PathResult.from_dict, dump=PathResult.to_dict, label=label)


def _sharded_search(subject: Subject, images: Images, names: list[str], cfg: SearchConfig, checkpoint,
                    meta: dict) -> PathResult:
    """The search under torchrun: the classes shared out across the ranks (`distributed.strided`), each
    rank searching its own with its own checkpoint, then gathered on every rank in the searched order.
    Each class draws from its own generator, so the paths do not depend on the number of ranks (the
    logits only up to float rounding: a batch holds other classes' images)."""
    classes = list(range(len(subject.classes))) if cfg.classes is None else list(cfg.classes)
    mine = distributed.strided(classes)
    own = distributed.own_checkpoint(checkpoint)
    part = None if not mine else method.search(
        subject.model, images, names, cfg.replace(classes=mine, device=str(distributed.device(cfg.device))),
        subject.input_size, subject.classes, checkpoint=own, meta=meta)
    parts = [p for p in distributed.gather(part) if p is not None]
    own.clear()
    where = {c: (p, p.row(c)) for p in parts for c in p.classes}
    pick = lambda attr: {n: torch.stack([getattr(where[c][0], attr)[n][where[c][1]] for c in classes])  # noqa: E731
                         for n in names}
    order = {c: i for i, c in enumerate(classes)}
    history = pd.concat([p.history for p in parts], ignore_index=True)
    history = history.iloc[np.lexsort((history["class"].map(order), history["epoch"]))].reset_index(drop=True)
    info = dict(parts[0].meta, config=cfg.search_fields(), seconds=max(p.meta["seconds"] for p in parts),
                ranks=len(parts), epochs_done=max(p.meta["epochs_done"] for p in parts))
    return PathResult(names, classes, parts[0].class_names, pick("logits"), pick("final_logits"), history, info)


def seeded_paths(subject: Subject, cfg: SeedsConfig) -> list[PathResult]:
    """`find_paths` for each of the run's search seeds (the first is the run's `seed`)."""
    return [find_paths(subject, cfg.replace(seed=s)) for s in cfg.seeds()]


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


def random_draws(result: PathResult, n: int) -> list[PathResult]:
    """`n` random-path controls of a search: draw i uses seed 1000 * (search seed + 1) + i, so every
    (search seed, draw) pair has its own."""
    base = 1000 * (int(result.meta["config"]["seed"]) + 1)
    return [random_paths(result, base + i) for i in range(n)]


def interval_row(values, above: float, paired_with=None, **label) -> dict:
    """One verdict row: the mean of `values` (minus `paired_with`, paired) with its 95 % interval and the
    verdict 'held' / 'did not hold' / 'inconclusive' against `above`."""
    iv = mean_interval(values) if paired_with is None else paired_interval(values, paired_with)
    return {**label, "n": iv.n, "mean": iv.mean, "ci low": iv.low, "ci high": iv.high, "against": above,
            "verdict": iv.verdict(above=above)}


# ============================================================================ maps and hit rates (nad_hitrate)
def subjects_and_paths(cfg: HitRateConfig) -> tuple[dict[str, Subject], dict[str, list[PathResult]]]:
    """For each of `cfg.models`: its subject and its paths for every search seed (cached searches, the
    model's beta by `beta_for`). Every subject is loaded (and the parameters checked) before any search."""
    subjects = {m: subject_for(cfg, m) for m in cfg.models}
    return subjects, {m: seeded_paths(S, cfg.search_for(m)) for m, S in subjects.items()}


def models_overview(subjects: Mapping[str, Subject], results: Mapping[str, list[PathResult]]) -> pd.DataFrame:
    """One row per model: accuracy, gated layers, channels, kept fraction (first seed), beta, search time."""
    rows = []
    for m, S in subjects.items():
        R = results[m][0]
        hard = R.hard()
        rows.append({"model": m, "dataset": S.dataset, "val_acc": S.val_acc, "gated layers": len(R.layers),
                     "gated channels": sum(v.shape[1] for v in hard.values()),
                     "kept fraction": sum(int(v.sum()) for v in hard.values()) / sum(v.numel() for v in hard.values()),
                     "beta": R.meta["config"]["beta"], "search seeds": len(results[m]),
                     "search seconds (all seeds)": round(sum(r.meta.get("seconds", float("nan")) for r in results[m]), 1)})
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


def mosaics_of(subject: Subject, result: PathResult, cfg: HitRateConfig) -> method.Mosaics:
    """The run's mosaics of validation images (seeded by `cfg.seed`, the same for every model)."""
    return method.make_mosaics(val_images(subject), cfg.n_mosaics, subject.input_size, cfg.seed,
                               classes=result.classes, resize=cfg.mosaic_input == "resized")


def hit_rate_study(subject: Subject, results: Sequence[PathResult], cfg: HitRateConfig) -> pd.DataFrame:
    """2x2 hit rates per layer and mosaic of the learned paths of every search seed and of `cfg.n_random`
    random-path controls per seed (same per-layer keep counts). Long table: model, search seed, paths,
    draw, layer, layer_index, mosaic, hit."""
    mos = mosaics_of(subject, results[0], cfg)
    hits = lambda res: method.hit_rates(subject.model, res, mos, cfg.mask_rate, cfg.legacy,  # noqa: E731
                                        progress=cfg.progress)
    parts = []
    for res in results:
        seed = int(res.meta["config"]["seed"])
        parts.append(hits(res).assign(paths=LEARNED, draw=0, search_seed=seed))
        parts += [hits(ctrl).assign(paths=RANDOM, draw=i, search_seed=seed)
                  for i, ctrl in enumerate(random_draws(res, cfg.n_random))]
    out = pd.concat(parts, ignore_index=True)
    out.insert(0, "model", subject.name)
    return out


def compare_hit_rates(subjects: Mapping[str, Subject], results: Mapping[str, list[PathResult]],
                      cfg: HitRateConfig) -> pd.DataFrame:
    """`hit_rate_study` for every model on the same mosaics (same seed); one long table."""
    return pd.concat([hit_rate_study(S, results[m], cfg) for m, S in subjects.items()], ignore_index=True)


def _per_mosaic(long: pd.DataFrame) -> pd.DataFrame:
    """Hit rate per model, paths, layer and mosaic, averaged over search seeds and random draws."""
    return long.groupby(["model", "paths", "layer_index", "layer", "mosaic"], sort=True)["hit"].mean().reset_index()


def hit_summary(long: pd.DataFrame) -> pd.DataFrame:
    """Per model, paths and layer: mean, std over mosaics (upstream's statistic, ddof 0 as its numpy) and the
    95 % interval over mosaics (ours); each mosaic's hit averaged over search seeds and random draws."""
    g = _per_mosaic(long).groupby(["model", "paths", "layer_index", "layer"], sort=True)["hit"]
    out = g.mean().rename("mean").to_frame()
    out["std"] = g.std(ddof=0)
    ivs = g.apply(lambda v: mean_interval(v.to_numpy()))
    out["ci low"], out["ci high"] = [iv.low for iv in ivs], [iv.high for iv in ivs]
    out["n_mosaics"] = g.size()
    return out.reset_index()


def _deep(long: pd.DataFrame, by: Sequence[str], n_deep: int = DEEP_LAYERS) -> pd.DataFrame:
    """Mean hit rate of each model's `n_deep` deepest gated layers, per model, paths and `by`."""
    last = long.groupby("model")["layer_index"].transform("max")
    deep = long[long["layer_index"] > last - n_deep]
    return deep.groupby(["model", "paths", *by], sort=True)["hit"].mean().unstack("paths")


def hit_verdicts(long: pd.DataFrame, n_deep: int = DEEP_LAYERS) -> pd.DataFrame:
    """The claims of nad_hitrate per model, on the mean hit rate of the deepest `n_deep` gated layers:
    learned paths above chance (0.25) and above random paths of the same keep counts (paired). Unit of
    replication: the mosaics (the paths of all search seeds averaged per mosaic: the question is these
    searches' paths on new images) and, with two or more search seeds, the seeds (the question is the
    search itself: each seed's mean over the mosaics)."""
    rows = []
    for unit, by in (("mosaics", "mosaic"), ("search seeds", "search_seed")):
        deep = _deep(long, [by], n_deep)
        for model, grp in deep.groupby(level="model", sort=False):
            if len(grp) < 2:
                continue
            rows.append(interval_row(grp[LEARNED], CHANCE, model=model, claim="learned paths above chance",
                                     unit=unit))
            rows.append(interval_row(grp[LEARNED], 0.0, grp[RANDOM], model=model, unit=unit,
                                     claim="learned minus random paths above 0"))
    return pd.concat([pd.DataFrame(rows), depth_verdicts(long, n_deep)], ignore_index=True)


def depth_verdicts(long: pd.DataFrame, n_deep: int = DEEP_LAYERS) -> pd.DataFrame:
    """The paper's depth claim per model, learned paths: the mean hit rate of the `n_deep` deepest gated layers
    minus that of the first gated layer, paired, above 0 (units of replication as in `hit_verdicts`)."""
    learned = long[long["paths"] == LEARNED]
    rows = []
    for unit, by in (("mosaics", "mosaic"), ("search seeds", "search_seed")):
        deep = _deep(learned, [by], n_deep)[LEARNED]
        first = learned[learned["layer_index"] == 1].groupby(["model", by], sort=True)["hit"].mean()
        for model, grp in deep.groupby(level="model", sort=False):
            if len(grp) >= 2:
                rows.append(interval_row(grp, 0.0, first.loc[grp.index], model=model, unit=unit,
                                         claim=f"learned: {n_deep} deepest minus first gated layer above 0"))
    return pd.DataFrame(rows)


def upstream_summary(long: pd.DataFrame, n_deep: int = DEEP_LAYERS) -> pd.DataFrame:
    """Upstream's summary beside ours, learned paths: cam_2x2.py `test()` prints the mean hit rate over the
    mosaics of the last, second-to-last and third-to-last gated layer; ours is the mean over the `n_deep`
    deepest layers with its 95 % interval over mosaics."""
    per = _per_mosaic(long[long["paths"] == LEARNED])
    rows = []
    for model, grp in per.groupby("model", sort=False):
        by_layer = grp.groupby("layer_index")["hit"].mean().sort_index()
        deep = _deep(long[long["model"] == model], ["mosaic"], n_deep)[LEARNED]
        iv = mean_interval(deep.to_numpy())
        rows.append({"model": model, **{f"upstream test(): layer -{i + 1}": float(by_layer.iloc[-1 - i])
                                        for i in range(min(3, len(by_layer)))},
                     f"ours: mean of the {n_deep} deepest": iv.mean, "ours: ci low": iv.low, "ours: ci high": iv.high})
    return pd.DataFrame(rows).set_index("model")


def mosaic_example(subject: Subject, result: PathResult, cfg: HitRateConfig, mosaic_index: int = 0,
                   layer: str | None = None) -> dict:
    """One mosaic of `hit_rate_study` with each quadrant class's map and top pixels at `layer` (the deepest)."""
    mos = mosaics_of(subject, result, cfg)
    layer = layer or result.layers[-1]
    x = mos.images[mosaic_index:mosaic_index + 1].repeat(4, 1, 1, 1)
    classes = [int(c) for c in mos.classes[mosaic_index]]
    gates = {n: torch.stack([result.path(c)[n] for c in classes]) for n in result.layers}
    cams = method.activation_maps(subject.model, x, [layer], gates)[layer]
    sel = method.select_top(cams, cfg.mask_rate)
    return {"image": val_images(subject).display(x[0]), "cams": cams, "selection": sel, "layer": layer,
            "mask_rate": cfg.mask_rate, "hits": [float(method.quadrant_shares(sel[q:q + 1])[0, q]) for q in range(4)],
            "classes": [result.class_names[c] for c in classes], "model": subject.name}


# ============================================================================ similarity (nad_subarch)
def class_probabilities(subject: Subject, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Softmax outputs (N, K) and labels on the validation set (the classifier's confusions)."""
    device = next(subject.model.parameters()).device
    logits, labels = predict(subject.model, subject.val_ds, device=device, amp=False, progress=progress)
    return torch.softmax(logits, 1).numpy(), labels.numpy()


def confusion_neighbours(probs: np.ndarray, labels: np.ndarray, classes: Sequence[int], k: int = 3) -> dict:
    """Per class: top-k predictions (ours: mean softmax over its images; upstream: of its first validation
    image), top-k wrong classes, most-mistaken class."""
    out = {}
    preds = probs.argmax(1)
    for c in classes:
        sel = labels == c
        mean = probs[sel].mean(0) if sel.any() else np.zeros(probs.shape[1])
        first = probs[np.flatnonzero(sel)[0]] if sel.any() else mean
        top = [int(j) for j in np.argsort(-mean, kind="stable")[:k]]
        wrong = [int(j) for j in np.argsort(-mean, kind="stable") if j != c and j in classes][:k]
        counts = np.bincount(preds[sel], minlength=probs.shape[1]).astype(float)
        counts[c] = -1
        counts[[j for j in range(probs.shape[1]) if j not in classes]] = -1
        mistaken = int(np.argmax(counts)) if counts.max() > 0 else wrong[0]
        out[c] = {"top": top, "first_top": [int(j) for j in np.argsort(-first, kind="stable")[:k]],
                  "wrong": wrong, "mistaken": mistaken}
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
    """Each class's top-k most similar sub-architectures beside the classifier's top-k predictions: upstream's
    (similarSubArch.py: its first validation image) and ours (mean softmax over its validation images)."""
    names = result.class_names
    rows = []
    for c, similar in zip(result.classes, similar_names(result, k)):
        row = {"class": names[c], **{f"similar {i + 1}": s for i, s in enumerate(similar)}}
        row.update({f"upstream: predicted {i + 1}": names[j] for i, j in enumerate(neighbours[c]["first_top"][:k])})
        row.update({f"ours: predicted {i + 1}": names[j] for i, j in enumerate(neighbours[c]["top"][:k])})
        rows.append(row)
    return pd.DataFrame(rows).set_index("class")


def agreement(result: PathResult, neighbours: dict, k: int = 3) -> pd.DataFrame:
    """Our agreement score (not in the paper), per class: `mistaken_in_topk` is 1 when the class it is most
    often mistaken for is among its k most similar sub-architectures; `overlap_at_k` is |top-k wrong
    classes & top-k similar| / k. Rows: the searched classes."""
    top = method.top_similar(method.iou_matrix(result), k)
    rows = []
    for r, c in enumerate(result.classes):
        similar = {result.classes[j] for j in top[r]}
        rows.append({"class": c, "mistaken_in_topk": float(neighbours[c]["mistaken"] in similar),
                     "overlap_at_k": len(similar & set(neighbours[c]["wrong"][:k])) / max(1, top.shape[1])})
    return pd.DataFrame(rows).set_index("class")


def agreement_table(results: Sequence[PathResult], neighbours: dict, k: int = 3, n_random: int = 20) -> pd.DataFrame:
    """Agreement score of the learned paths against `n_random` random-path controls per search seed and chance
    top_k / (K - 1), each comparison decided by a paired 95 % interval: over the classes (per class, the
    learned score averaged over search seeds minus the random one averaged over seeds and draws; the
    question is these searches' paths) and, with two or more seeds, over the search seeds."""
    learned = [agreement(res, neighbours, k) for res in results]
    rand = [pd.concat([agreement(ctrl, neighbours, k) for ctrl in random_draws(res, n_random)]).groupby(level=0).mean()
            for res in results]
    K = len(results[0].classes)
    chance = min(k, K - 1) / max(1, K - 1)
    rows = []
    for key in ("mistaken_in_topk", "overlap_at_k"):
        per_class = (sum(a[key] for a in learned) / len(learned), sum(a[key] for a in rand) / len(rand))
        per_seed = ([a[key].mean() for a in learned], [a[key].mean() for a in rand])
        base = {"score": key, "learned paths": float(per_class[0].mean()), "random paths": float(per_class[1].mean()),
                "chance": chance}
        for unit, (a, b) in (("classes", per_class), ("search seeds", per_seed)):
            if len(a) >= 2:
                rows.append({**base, **interval_row(np.asarray(a), 0.0, np.asarray(b), unit=unit,
                                                    claim="learned minus random paths above 0")})
    return pd.DataFrame(rows)


def pair_table(results: Sequence[PathResult], probs: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Every pair of searched classes (a, b): the IoU of their paths (mean over the search seeds), its rank
    among all pairs (1: the most similar), and the classifier's confusion between them (images of a
    predicted b plus images of b predicted a, over the images of both); sorted by confusion."""
    sim = np.mean([method.iou_matrix(r) for r in results], axis=0)
    res, preds = results[0], probs.argmax(1)
    rows = []
    for i, j in itertools.combinations(range(len(res.classes)), 2):
        a, b = res.classes[i], res.classes[j]
        mixed = int(((labels == a) & (preds == b)).sum() + ((labels == b) & (preds == a)).sum())
        rows.append({"pair": f"{res.class_names[a]} / {res.class_names[b]}", "path IoU": float(sim[i, j]),
                     "confused": mixed, "confusion": mixed / max(1, int(np.isin(labels, [a, b]).sum()))})
    out = pd.DataFrame(rows)
    out.insert(2, "IoU rank", out["path IoU"].rank(ascending=False, method="min").astype(int))
    out["IoU rank"] = out["IoU rank"].astype(str) + f" of {len(out)}"
    return out.sort_values(["confusion", "path IoU"], ascending=False).set_index("pair")


def explorer_table(result: PathResult, neighbours: dict, k: int = 3) -> pd.DataFrame:
    """The explorer's static form: per class, kept channels per layer and its nearest classes."""
    kf = result.keep_fraction()
    out = kf.round(2).copy()
    out.columns = [f"kept {c}" for c in kf.columns]
    out["nearest sub-architectures"] = [", ".join(s) for s in similar_names(result, k)]
    out["most mistaken for"] = [result.class_names[neighbours[c]["mistaken"]] for c in result.classes]
    return out
