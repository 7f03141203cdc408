"""Running Network Dissection: its configs and the cached two-pass `dissect`.

- `DissectConfig`: how to dissect (the paper's quantile and IoU threshold, union rule, buffers,
  batches, caching); `Config` adds what the notebook dissects (model, weights, layers, data).
- `dissect(model, layers, broden_root, cfg)`: both passes over a Broden set, each a
  `netanatomy.streaming.tally` of `method.UnitThresholds` / `method.UnitTally` cached with
  `netanatomy.cache.cached` (resumable), then IoU and the tally per layer (`LayerDissection`).
- `world_broden(world)`: a concept world's validation split exported as Broden (cached).
- `study(cfg)`: the notebook's run (subject, layers, data, dissection); `unit_labels(cfg, layer)`:
  one layer's per-unit labels from that run (cached), for notebooks that read them.
The result tables and tally files are in `tables`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .. import broden as brd
from .. import cache, data, distributed, models, streaming
from ..config import RunConfig, boolean, choice, either, integer, items, number, optional, param, text
from ..errors import ParamError
from ..hooks import get_module, run as run_model, trace
from ..runtime import cache_dir, resolve_path, weights_fingerprint
from ..subject import Subject, load_subject, scale as builtin_scale
from ..world import WorldConfig
from .method import (COUNTINGS, IDENTITY_FIELD, LITE_NORMALIZE, QUANTILE_METHODS, UNION_RULES,
                     UPSAMPLINGS, UnitTally, UnitThresholds, compose_fieldmap, iou_from_counts, layer_fieldmap,
                     make_tally, receptive_field_grid, tally_summary)

#: Architectures the zoo trains on the concept world (the others need `weights`).
ZOO_MODELS = ("small_vgg", "small_resnet")
#: Where the shared data keep NetDissect's published files (relative paths resolve from the repo root too).
PUBLISHED_DIR = "../shared/data/dissection"


# ----------------------------------------------------------------------------- configuration

def mean_std(spec, root: Path | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of a `normalize` value: 'auto' (the world's for a world export at `root`, else
    ImageNet's), 'none', 'netdissect_lite' (`method.LITE_NORMALIZE`), a data-set name of
    `netanatomy.data.normalization` ('world', 'imagenet', ...) or a pair (mean, std) of RGB
    triples on the 0-1 scale."""
    if isinstance(spec, str):
        if spec == "none":
            return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if spec == "netdissect_lite":
            return LITE_NORMALIZE
        if spec == "auto":
            spec = "world" if root is not None and brd.is_world_export(root) else "imagenet"
        try:
            return data.normalization(spec)
        except ParamError:
            pass
    elif isinstance(spec, (list, tuple)):
        return data.resolve_normalize("imagenet", spec)
    raise ParamError("normalize", f"{spec!r} is not 'auto', 'none', 'netdissect_lite', a data-set name ('world', "
                                  f"'imagenet', ...) or a pair (mean, std)")


def _normalize(name: str, value: Any) -> Any:
    mean_std(value)  # raises ParamError for a bad value
    return value


def _one_name(name: str, value: Any) -> list[str]:
    return [text()(name, value)]


@dataclasses.dataclass
class DissectConfig(RunConfig):
    """How to dissect (defaults: the paper's and the original code's); see `method` for the steps."""

    quantile: float = param(0.005, number(0, 1, lo_open=True, hi_open=True),
                            "top share of activations above the threshold (0.005: the 0.995 quantile)")
    iou_threshold: float = param(0.04, number(0, 1), "a unit is a detector of its best label when IoU >= this")
    categories: list[str] | None = param(None, optional(either(_one_name, items(text()),
                                                               expected="a category name or a list of them")),
                                         "Broden categories to use (None: all of the data set)")
    union_rule: str = param("image", choice(*UNION_RULES), "'image' (NetDissect) or 'lite' (NetDissect-Lite)")
    upsample: str = param("bilinear", choice(*UPSAMPLINGS),
                          "'bilinear' (NetDissect-Lite) or 'receptive_field' (NetDissect's centred upsampling)")
    batch_size: int = param(64, integer(1), "images per forward pass")
    normalize: Any = param("auto", _normalize,
                           "'auto', 'world', 'imagenet', 'netdissect_lite', 'none' or (mean, std) on 0-1")
    quantile_method: str = param("auto", choice(*QUANTILE_METHODS),
                                 "'exact', 'sample' or 'auto' (exact when it fits max_buffer)")
    max_buffer: int = param(16384, integer(1), "most activations kept per unit for the quantile")
    top_images: int = param(10, integer(1), "images per unit in the report (by per-image maximum)")
    num_workers: int = param(0, integer(0), "data-loading worker processes")
    split: str | None = param(None, optional(text()), "rows of one split of index.csv (None: all)")
    tally_chunk: int = param(1 << 25, integer(1), "most elements of one upsampled mask block in the tally")
    checkpoint_every: int = param(200, integer(1), "batches between checkpoints of a pass")
    cache: bool = param(True, boolean(), "cache both passes (and resume them)")


@dataclasses.dataclass
class Config(DissectConfig):
    """The dissection notebook's parameters: what to dissect, and how (`DissectConfig`)."""

    model: str = param("small_vgg", choice(*models.MODEL_NAMES), "architecture (models.build name)")
    weights: str | None = param(None, optional(text()), "checkpoint of a real model (None: the zoo's net)")
    num_classes: int | None = param(None, optional(integer(1)), "classes of `weights` (365 for Places365)")
    layers: Any = param("dissect", either(text(), items(text(), unique=True), expected="a preset or layer names"),
                        "a layer preset of the model or a list of layer names")
    broden_root: str | None = param(None, optional(text()), "Broden folder (None: the concept world as Broden)")
    world_size: int | None = param(None, optional(integer(16, 1024)),
                                   "image size of the exported concept world (None: the scale's world's own)")
    input_size: int | None = param(None, optional(integer(8, 4096)), "model input size (None: the images' own)")
    gallery_units: int = param(8, integer(1, 64), "units shown inline in the gallery")
    counting: str = param("paper", choice(*COUNTINGS),
                          "how detectors are counted: 'paper' (per category) or 'top_label' (NetDissect-Lite)")
    published_mat: str | None = param(PUBLISHED_DIR + "/semantics_cvpr_release.mat", optional(text()),
                                      "NetDissect's semantics_cvpr_release.mat (None or absent: section skipped)")
    published_csvs: str | None = param(PUBLISHED_DIR, optional(text()),
                                       "folder of NetDissect's published per-unit CSVs (None or absent: skipped)")

    def validate(self) -> None:
        """Everything checkable before the model is loaded or trained: names, files, the Broden folder."""
        if self.weights is None and self.model not in ZOO_MODELS:
            raise ParamError("weights", f"model {self.model!r} needs a weights file (only the concept-world nets "
                                        f"{' and '.join(ZOO_MODELS)} are trained by the zoo)")
        if self.weights is not None and self.num_classes is None:
            raise ParamError("num_classes", "give the number of classes of the weights file (e.g. 365 for "
                                            "Places365, 1000 for ImageNet)")
        if self.weights is not None and not resolve_path(self.weights).is_file():
            raise ParamError("weights", f"{resolve_path(self.weights)} is not a file")
        if isinstance(self.layers, str):
            models.layers(self.model, self.layers)  # a known preset of the model
        else:  # names checked on the bare architecture (cheap), before any weights are loaded or trained
            models.resolve_layers(models.build(self.model, self.num_classes or 2), self.model, self.layers)
        if self.broden_root is not None:
            if self.world_size is not None:
                raise ParamError("world_size", "applies to the exported concept world only; set broden_root to None")
            brd.open_broden(self.broden_root, self.categories, self.split)
        else:  # the concept world's export: its categories, one split 'val'
            unknown = [c for c in self.categories or () if c not in brd.WORLD_LAYOUT]
            if unknown:
                raise ParamError("categories", f"{unknown[0]!r} is not a category of the concept world; "
                                               f"available: {', '.join(brd.WORLD_LAYOUT)}")
            if self.split not in (None, "val"):
                raise ParamError("split", f"the exported concept world has the split 'val' only, not {self.split!r}")
        for name, want in (("published_mat", "is_file"), ("published_csvs", "is_dir")):
            path = resolve_path(getattr(self, name))
            if path is not None and path.exists() and not getattr(path, want)():
                raise ParamError(name, f"{path} is not a {'file' if want == 'is_file' else 'folder'}")


# ----------------------------------------------------------------------------- results

@dataclasses.dataclass
class LayerDissection:
    """The dissection of one layer.

    tally: DataFrame in NetDissect-Lite's tally.csv format (see `method.make_tally`); iou (units,
    labels); thresholds (units,); labels: DataFrame (number, name, category) of the iou columns;
    intersection (units, labels), activation (units, categories) = A_cat, truth (labels,) = G;
    top_images (units, n) data-set indices by per-image max activation and top_maps (units, n, h, w)
    their activation maps at feature resolution (for the report's overlays).
    """

    layer: str
    tally: pd.DataFrame
    iou: np.ndarray
    thresholds: np.ndarray
    labels: pd.DataFrame
    categories: list[str]
    intersection: np.ndarray
    activation: np.ndarray
    truth: np.ndarray
    top_images: np.ndarray
    top_maps: np.ndarray
    iou_threshold: float = 0.04

    @property
    def units(self) -> int:
        return len(self.thresholds)

    def summary(self, counting: str = "top_label") -> dict:
        """units, interpretable (detectors), unique_concepts, per_category {cat: detectors},
        unique_per_category under `counting` ('top_label' or 'paper': `method.tally_summary`)."""
        return tally_summary(self.tally, self.iou_threshold, self.categories, counting)

    def unit_labels(self) -> pd.DataFrame:
        """One row per unit in channel order: unit (0-based channel index), concept (its top label
        over all categories, '-' when it overlaps no label), category, iou, and detector
        (iou >= the IoU threshold): NetDissect-Lite's per-unit label, the tally's first four columns."""
        t = self.tally.sort_values("unit", kind="stable")
        return pd.DataFrame({"unit": t["unit"].to_numpy(int) - 1, "concept": t["label"].astype(str).to_numpy(),
                             "category": t["category"].astype(str).to_numpy(),
                             "iou": t["score"].to_numpy(float),
                             "detector": t["score"].to_numpy(float) >= self.iou_threshold})


# ----------------------------------------------------------------------------- data and activations

def world_broden(world_cfg: WorldConfig, progress: bool = True) -> Path:
    """The validation split of the concept world `world_cfg` exported as Broden (cached, exported on first use)."""
    key = brd.world_key(world_cfg, "val")
    return brd.export_world(world_cfg, cache_dir("broden") / f"world-val-{world_cfg.image_size}px-{key}",
                            split="val", progress=progress)


class _Images(torch.utils.data.Dataset):
    """The images of a Broden set with their indices (the first pass needs no segmentations)."""

    def __init__(self, ds: brd.BrodenDataset):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds.load_image(i), i


def _collate_images(items):
    images, idx = zip(*items)
    return brd.stack_images(images), torch.tensor(idx)


@dataclasses.dataclass
class _Probe:
    """The probed layers' activations of a batch of uint8 images (resized and normalised)."""

    model: nn.Module
    layers: list[str]
    input_size: int
    mean: torch.Tensor
    std: torch.Tensor
    device: torch.device

    def _prepare(self, images) -> torch.Tensor:
        """uint8 (B, H, W, 3) images (or a list of them) -> normalised float (B, 3, s, s) on the device."""
        s = self.input_size
        out = []
        for im in (images if isinstance(images, list) else [images]):
            x = im.to(self.device)
            x = (x.unsqueeze(0) if x.dim() == 3 else x).permute(0, 3, 1, 2).float().div_(255)
            if tuple(x.shape[-2:]) != (s, s):
                x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
            out.append(x)
        return (torch.cat(out) - self.mean) / self.std

    def __call__(self, images) -> dict[str, torch.Tensor]:
        with torch.no_grad(), trace(self.model, self.layers, stop=True, detach=True) as t:
            run_model(self.model, self._prepare(images))
        acts = {}
        for name in self.layers:
            a = t.outputs[name]
            if not isinstance(a, torch.Tensor) or a.dim() != 4:
                shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
                raise ParamError("layers", f"layer {name!r} outputs {shape}; dissection needs a (N, C, H, W) "
                                           f"convolutional feature map")
            acts[name] = a.float()
        return acts


def field_map(model: nn.Module, layer: str) -> tuple:
    """`layer`'s field map (``method.IDENTITY_FIELD`` layout) over the model's torch.fx graph, as
    NetDissect's ``composed_fieldmap`` does over a Caffe net: along the graph each node composes its
    own geometry (`method.layer_fieldmap`) onto the largest field map of its inputs."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: no graph to read the geometry from
        raise ParamError("upsample", f"'receptive_field' needs a model torch.fx can trace ({type(exc).__name__}); "
                                     f"use 'bilinear'") from None
    modules, fields, out = dict(model.named_modules()), {}, None
    for node in graph.nodes:
        inputs = [fields[a] for a in node.all_input_nodes if fields.get(a) is not None]
        if node.op == "placeholder" or not inputs:
            fields[node] = IDENTITY_FIELD if node.op == "placeholder" else None
            continue
        own = layer_fieldmap(modules.get(node.target)) if node.op == "call_module" else IDENTITY_FIELD
        widest = max(inputs, key=lambda f: f[1][0])
        fields[node] = None if own is None else compose_fieldmap(widest, own)
        stack = node.meta.get("nn_module_stack") or {}
        path = node.target if node.op == "call_module" else (next(reversed(stack)) if stack else "")
        if path == layer or str(path).startswith(layer + "."):
            out = node
    if out is None or fields[out] is None:
        raise ParamError("upsample", f"no receptive-field geometry for layer {layer!r} (not in the traced graph, "
                                     f"or after adaptive pooling); use 'bilinear'")
    return fields[out]


def _grids(probe: "_Probe", ds: brd.BrodenDataset, pass1: dict, cfg: DissectConfig) -> dict:
    """Each layer's receptive-field interpolation matrices (None for bilinear upsampling)."""
    if cfg.upsample == "bilinear":
        return {name: None for name in pass1}
    if ds.seg_shape is None:
        raise ParamError("upsample", f"'receptive_field' needs one segmentation size; {ds.root} mixes several")
    reduction = max(1, round(probe.input_size / ds.seg_shape[1]))
    out = {}
    for name, p1 in pass1.items():
        offset, size, step = field_map(probe.model, name)
        centre = tuple(o + k // 2 for o, k in zip(offset, size))
        out[name] = receptive_field_grid(p1["hw"], ds.seg_shape, centre, step, reduction)
    return out


def _model_input_size(ds: brd.BrodenDataset, input_size: int | None) -> int:
    if input_size is None:
        sizes = {(r.ih, r.iw) for r in ds.rows[:2000]}
        if len(sizes) != 1 or len({*next(iter(sizes))}) != 1:
            raise ParamError("input_size", f"the images of {ds.root} have sizes {sorted(sizes)[:4]}; give input_size")
        return next(iter(sizes))[0]
    return integer(8, 4096)("input_size", input_size)


# ----------------------------------------------------------------------------- the method

def dissect(model: nn.Module, layers: Sequence[str] | str, broden_root: str | Path, cfg: DissectConfig | None = None,
            input_size: int | None = None) -> dict[str, LayerDissection]:
    """Dissect `layers` of `model` on the Broden set at `broden_root`; one LayerDissection per layer.

    Images are resized to `input_size` (default: their own size) and normalised by
    `cfg.normalize`. Two passes over the data, both cached under ``cache_dir("dissect")`` keyed
    by the model's weights, the layers, the data (`netanatomy.data.fingerprint` of the folder:
    every file's path, size and modification time, so a changed image or segmentation is seen)
    and the configuration, with periodic checkpoints.
    """
    cfg = cfg or DissectConfig()
    layers = list(dict.fromkeys([layers] if isinstance(layers, str) else layers))
    if not layers:
        raise ParamError("layers", "no layers given")
    for name in layers:
        get_module(model, name)  # clear error listing valid names
    if broden_root is None:
        raise ParamError("broden_root", "no Broden folder given")
    ds = brd.open_broden(broden_root, cfg.categories, cfg.split)
    size = _model_input_size(ds, input_size)
    mean_t, std_t = mean_std(cfg.normalize, ds.root)
    device = distributed.device(cfg.device)
    probe = _Probe(model, layers, size, torch.tensor(mean_t, device=device).view(1, 3, 1, 1),
                   torch.tensor(std_t, device=device).view(1, 3, 1, 1), device)
    key1 = dict(weights=weights_fingerprint(model), layers=layers, data=data.fingerprint(ds.root), split=cfg.split,
                n=len(ds), quantile=cfg.quantile, method=cfg.quantile_method, max_buffer=cfg.max_buffer,
                top=cfg.top_images, seed=cfg.seed, size=size, mean=mean_t, std=std_t)
    path1 = cache.entry("dissect", "pass1", **key1) if cfg.cache else None
    path2 = cache.entry("dissect", "pass2", pass1=key1, categories=ds.category_names,
                        union_rule=cfg.union_rule, upsample=cfg.upsample) if cfg.cache else None
    was_training, first_device = model.training, next(iter(model.parameters()), torch.empty(0)).device
    model.eval().to(device)
    try:
        pass1 = cache.cached(path1, lambda checkpoint: _thresholds(probe, ds, cfg, checkpoint),
                             label="dissect: thresholds")
        pass2 = cache.cached(path2, lambda checkpoint: _tally(probe, ds, cfg, pass1, checkpoint),
                             label="dissect: tally")
    finally:
        model.to(first_device)
        model.train(was_training)
    labels = ds.labels[["number", "name", "category"]].reset_index(drop=True)
    label_cat = labels["category"].map({c: i for i, c in enumerate(ds.category_names)}).to_numpy()
    results = {}
    for name in layers:
        counts = pass2[name]
        inter, act_cat, truth = counts["inter"], counts["act_cat"], counts["truth"]
        iou = iou_from_counts(inter, act_cat, truth, label_cat)
        results[name] = LayerDissection(
            layer=name, tally=make_tally(iou, inter, act_cat, truth, labels, ds.category_names), iou=iou,
            thresholds=pass1[name]["thresholds"].numpy().astype(np.float64), labels=labels,
            categories=list(ds.category_names), intersection=inter, activation=act_cat, truth=truth,
            top_images=pass1[name]["top_idx"].numpy(), top_maps=counts["top_maps"],
            iou_threshold=float(cfg.iou_threshold))
    return results


def _activations(probe: _Probe, stats: streaming.Stats, dataset, collate_fn, cfg: DissectConfig,
                 checkpoint: cache.Checkpoint, desc: str):
    """(activations per layer, batch) for each batch of `dataset`, via the resumable `streaming.tally`.
    Under torchrun each rank reads its own block of the images (`distributed.block`), with its own
    checkpoint; `_all_ranks` then merges the statistics."""
    part = data.Subset(dataset, distributed.block(len(dataset)))
    for batch in streaming.tally(stats, part, distributed.own_checkpoint(checkpoint), batch_size=cfg.batch_size,
                                 num_workers=cfg.num_workers, collate_fn=collate_fn,
                                 checkpoint_every=cfg.checkpoint_every, progress=cfg.progress, desc=desc):
        yield probe(batch[0]), batch


def _all_ranks(stats: streaming.Stats, fresh, checkpoint: cache.Checkpoint) -> streaming.Stats:
    """`stats` of this rank's images merged with every other rank's, in rank order (exact: top buffers
    and counts merge exactly), the same on every rank; `stats` itself in one process. `fresh()` builds
    empty statistics. The rank's own checkpoint is cleared once every rank holds the parts."""
    states = distributed.gather(stats.state_dict())
    if len(states) == 1:
        return stats
    distributed.own_checkpoint(checkpoint).clear()
    total = fresh()
    for state in states:
        part = fresh()
        part.load_state_dict(state)
        total.merge(part)
    return total


def _thresholds(probe: _Probe, ds: brd.BrodenDataset, cfg: DissectConfig, checkpoint: cache.Checkpoint) -> dict:
    """Pass 1: each layer's `UnitThresholds` result."""
    def fresh() -> streaming.Stats:
        return streaming.Stats({name: UnitThresholds(len(ds), cfg.quantile, cfg.quantile_method, cfg.max_buffer,
                                                     cfg.top_images, seed=cfg.seed * 1_000_003 + j)
                                for j, name in enumerate(probe.layers)})

    stats = fresh()
    for acts, (_, idx) in _activations(probe, stats, _Images(ds), _collate_images, cfg, checkpoint,
                                       "dissect: thresholds"):
        for name, stat in stats.items():
            stat.add(acts[name], idx)
    return {name: stat.result() for name, stat in _all_ranks(stats, fresh, checkpoint).items()}


def _tally(probe: _Probe, ds: brd.BrodenDataset, cfg: DissectConfig, pass1: dict,
           checkpoint: cache.Checkpoint) -> dict:
    """Pass 2: each layer's `UnitTally` result (G is the same for every layer; it is tallied per layer)."""
    labelcat = torch.from_numpy(ds.labelcat)
    grids = _grids(probe, ds, pass1, cfg)

    def fresh() -> streaming.Stats:
        return streaming.Stats({name: UnitTally(p1["thresholds"], labelcat, p1["top_idx"], p1["hw"],
                                                cfg.union_rule, cfg.tally_chunk, grids[name])
                                for name, p1 in pass1.items()})

    stats = fresh()
    for acts, (_, seg, scal, idx) in _activations(probe, stats, ds, brd.collate, cfg, checkpoint, "dissect: tally"):
        for name, stat in stats.items():
            stat.add(acts[name], seg, scal, idx)
    return {name: stat.result() for name, stat in _all_ranks(stats, fresh, checkpoint).items()}


# ----------------------------------------------------------------------------- the notebook's study

@dataclasses.dataclass
class Study:
    """The dissection notebook's run: the subject, the dissected layers, the Broden folder and the results."""

    subject: Subject
    layers: list[str]
    broden_root: Path
    results: dict[str, LayerDissection]


def study(cfg: Config) -> Study:
    """Dissect `cfg.layers` of the subject (the zoo's concept-world net, or `cfg.model` with
    `cfg.weights`) on `cfg.broden_root`, or on the scale's concept world exported as Broden."""
    subject = load_subject(cfg.model, "concept_world" if cfg.weights is None else None, None, cfg.weights,
                           cfg.scale, cfg.device, cfg.progress, num_classes=cfg.num_classes)
    names = models.resolve_layers(subject.model, cfg.model, cfg.layers)
    world = builtin_scale(cfg.scale).world
    if cfg.world_size is not None:
        world = dataclasses.replace(world, image_size=cfg.world_size)
    root = Path(cfg.broden_root) if cfg.broden_root is not None else world_broden(world, cfg.progress)
    return Study(subject, names, root, dissect(subject.model, names, root, cfg, input_size=cfg.input_size))


def unit_labels(cfg: Config, layer: str) -> pd.DataFrame:
    """Per-unit labels of `layer` (`LayerDissection.unit_labels`: unit, concept, category, iou,
    detector) from the dissection notebook's run with `cfg`, read from the cache when the notebook
    (or an earlier call) has run with the same parameters, else computed and cached.

    `cfg` holds the notebook's parameters, e.g. for a parameter set: ``Config.from_params(
    params.with_defaults("dissection", cli.read_params("params/dissection.cifar10_resnet20.yaml")))``;
    `layer` must be one of the dissected layers (``cfg.layers``)."""
    names = models.resolve_layers(models.build(cfg.model, cfg.num_classes or 2), cfg.model, cfg.layers)
    if layer not in names:
        raise ParamError("layer", f"{layer!r} is not a dissected layer of this configuration; dissected: "
                                  f"{', '.join(names)}")
    return study(cfg).results[layer].unit_labels()


# ----------------------------------------------------------------------------- tables and files
