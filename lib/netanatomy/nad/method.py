"""NAD: Architecture Disentanglement for Deep Neural Networks (Hu et al., ICCV 2021), the method.

Upstream code: hujiecpp/NAD (findpath.py, cam_1x1.py, cam_2x2.py, similarSubArch.py). This module
implements the method as the upstream code does it, with a batched search that learns the paths of
many classes in one pass.

Path search (`search`). The classifier is frozen (eval mode, no weight gradients). Each class c
holds one real gate logit per output channel of every gated layer (initialised N(0, 1)); during the
search a channel's output is multiplied by sigmoid(logit). The loss of a batch of class-c images,
with L gated layers and S the images the original network classifies correctly, is
``(CE(gated logits, c) on all images + sum_l MSE(gated act_l, original act_l) on S) / L +
beta * (sum_l mean_channels sigmoid(logit_l)^2) / L``; a batch with S empty is skipped. There is no
optimizer: every layer's logit vector moves by ``lr`` along its L2-normalised gradient. The path of
class c is the binary gate ``logit > 0`` read after `path_epoch` epochs.

Batched search. All requested classes are searched in one pass: each image carries its own class's
gates (per-sample gates of shape (N, C)), the loss is the sum of the per-class losses (each exactly
the one-class loss above, so gradients do not mix), and the per-class, per-layer normalised step is
applied to every class at once. Each class draws its logit init, images, crops and flips from its own
generator, seeded from ``(seed, class index)`` (`class_seed`), so a class's path does not depend on
which other classes ran, two seeds never share a stream, and the batched search equals the one-class
loop on identical batches. The search runs in fp32; ``amp=True`` asks for bf16 autocast (the path is
the sign of a logit, so bf16 can flip gates: `benchmarks/nad_search.py --precision` measures how many).

Activation maps (`activation_maps`). Forward with a class's hard path, sum the gated layer's output
over channels, min-max normalise per image, resize to the input size (bicubic); the top
``mask_rate`` pixels are selected. By default the selection is exact: the k = round(mask_rate * H *
W) largest pixels, with pixels tied at the k-th value sharing the remaining weight equally (so a
constant map, e.g. an empty path, gives every quadrant exactly the chance share 0.25 and never NaN).
``legacy=True`` reproduces upstream: the map is quantised to uint8, resized with PIL (bicubic), and
the pixels strictly greater than the k-th largest value are kept, with k = int(mask_rate * H * W) of
the map it thresholds (upstream's 224 x 224); if no pixel is kept the shares are 0.25 each instead of
upstream's NaN.

2x2 mosaics (`make_mosaics`, cam_2x2.py). Four validation images of four distinct classes, each
resized to the tile size T (the input size), pasted into a 2T x 2T mosaic (TL, TR, BL, BR), which
upstream then resizes to T x T before the forward pass (`preprocess_image`: RandomResizedCrop(224,
scale=(1, 1)) takes the whole 448 x 448 mosaic, bilinear), so each quadrant is T/2 at the input and
the map is counted on T x T. ``resize=False`` keeps the 2T x 2T mosaic (ours: each quadrant at the
input size). The hit rate of a quadrant is the share of the selected pixels of its class's map that
fall inside it; a mosaic's hit rate is the mean over its four quadrants.

Sub-architecture similarity (`iou_matrix`, similarSubArch.py). The similarity of two classes is the
IoU of their binary channel sets, averaged over the gated layers.

Conventions. IoU of two empty channel sets is 1 (identical sets); layer-averaged IoU is in [0, 1]
and symmetric with diagonal 1.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..config import RunConfig, boolean, either, integer, items, number, optional, param
from ..errors import DataError, ParamError, require
from ..hooks import channel_gates, trace
from ..runtime import autocast, pick_device
from .images import UPSTREAM_CROP_SCALE, ImageSource

#: beta per (dataset, model): the table in the header comment of upstream findpath.py
#: (hujiecpp/NAD; its argparse default 0.05 is overridden per run).
UPSTREAM_BETA: dict[tuple[str, str], float] = {
    ("imagenet", "vgg16"): 4.5, ("imagenet", "resnet50"): 0.02, ("imagenet", "densenet121"): 0.02,
    ("imagenet", "darts"): 0.45,
    ("places365", "vgg16"): 5.0, ("places365", "resnet50"): 0.02, ("places365", "densenet121"): 0.02,
    ("places365", "darts"): 0.20,
}
#: Upstream's other settings: findpath.py argparse defaults (lr, epoch, batch_size; the crop scale is in
#: `images`); cam_1x1.py / cam_2x2.py `--epoch 20`
#: (the path read after epoch 20); cam_1x1.py `--mask_rate 0.05`; cam_2x2.py main: mask_rate=0.1 on 100
#: mosaics of 4 distinct classes, each 448 x 448 mosaic resized to 224 x 224 and k counted on that map.
UPSTREAM_LR, UPSTREAM_EPOCHS, UPSTREAM_BATCH_SIZE, UPSTREAM_PATH_EPOCH = 0.1, 21, 16, 20
UPSTREAM_CAM_MASK_RATE, UPSTREAM_MOSAIC_MASK_RATE, UPSTREAM_N_MOSAICS = 0.05, 0.1, 100
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")

_CLASSES = either(optional(items(integer(0), unique=True)), integer(0),
                  expected="None, a class index or a non-empty list of distinct class indices >= 0")


# ============================================================================ settings
@dataclasses.dataclass
class SearchConfig(RunConfig):
    """Settings of one path search (defaults are upstream's); `seed`, `device` and `progress` come from
    RunConfig (class c draws its init, order, crops and flips from a generator seeded by `class_seed`)."""

    beta: float = param(4.5, number(0), "weight of the path-size regulariser")
    lr: float = param(UPSTREAM_LR, number(0, lo_open=True), "length of every layer's normalised logit step")
    epochs: int = param(UPSTREAM_EPOCHS, integer(1), "epochs over each class's own training images")
    batch_size: int = param(UPSTREAM_BATCH_SIZE, integer(1), "images per class per step")
    classes: list[int] | None = param(None, _CLASSES, "class indices to search (None: all)")
    path_epoch: int | None = param(UPSTREAM_PATH_EPOCH, optional(integer(1)),
                                   "the path is read after this many epochs (None: the last)")
    images_per_class: int | None = param(None, optional(integer(1)),
                                         "use only the first n training images of each class (None: all)")
    crop_scale: tuple[float, float] = param(UPSTREAM_CROP_SCALE, items(number(0, lo_open=True), min_len=2),
                                            "RandomResizedCrop scale range")
    flip: bool = param(True, boolean(), "random horizontal flip")
    amp: bool = param(False, boolean(), "bf16 autocast of the search (False: fp32; the path is the sign of a logit)")

    def validate(self) -> None:
        if isinstance(self.classes, int):
            self.classes = [self.classes]
        if self.path_epoch is None:
            self.path_epoch = self.epochs
        require(self.path_epoch <= self.epochs, "path_epoch",
                f"must be an integer in [1, epochs={self.epochs}] (or None for the last), got {self.path_epoch!r}")
        require(len(self.crop_scale) == 2 and self.crop_scale[0] <= self.crop_scale[1], "crop_scale",
                f"must be (low, high) with 0 < low <= high, got {self.crop_scale!r}")
        self.crop_scale = (float(self.crop_scale[0]), float(self.crop_scale[1]))

    def search_fields(self) -> dict:
        """The settings that decide the paths (result metadata, cache keys): SearchConfig's own fields
        but device, progress and scale (a config extending this one adds none)."""
        own = {f.name for f in dataclasses.fields(SearchConfig)} - {"device", "progress", "scale"}
        return {k: v for k, v in self.key().items() if k in own}


# ============================================================================ frozen network
@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and requires_grad False on every parameter; both restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


def layer_channels(model: nn.Module, layers: Sequence[str], example: torch.Tensor) -> dict[str, int]:
    """Output channels of each gated layer (one dry forward of `example`, an image (C, H, W))."""
    with frozen(model), torch.no_grad(), trace(model, layers, detach=True) as t:
        model(example.unsqueeze(0).to(_model_device(model)))
    return {name: int(t[name].shape[1]) for name in layers}


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def class_seed(seed: int, c: int) -> int:
    """The generator seed of class c in a search with `seed`: distinct for every (seed, class) pair."""
    return int(np.random.SeedSequence((seed, c)).generate_state(1, np.uint64)[0] >> 1)


class _ClassStream:
    """One class's training stream: its generator draws the logit init, the epoch order, crops and flips."""

    def __init__(self, images: ImageSource, c: int, size: int, cfg: SearchConfig, channels: Mapping[str, int]):
        self.c, self.images, self.size, self.cfg = c, images, size, cfg
        self.indices = images.indices_of(c)
        if cfg.images_per_class is not None:
            self.indices = self.indices[:cfg.images_per_class]
        if len(self.indices) == 0:
            raise DataError(f"class {c}", "has no training images", "at least one image per searched class")
        self.gen = torch.Generator().manual_seed(class_seed(cfg.seed, c))
        self.init = {name: torch.randn(n, generator=self.gen) for name, n in channels.items()}
        self.order: list[np.ndarray] = []

    def start_epoch(self) -> int:
        perm = torch.randperm(len(self.indices), generator=self.gen).numpy()
        idx = self.indices[perm]
        bs = self.cfg.batch_size
        self.order = [idx[k:k + bs] for k in range(0, len(idx), bs)]
        return len(self.order)

    def batch(self, k: int) -> torch.Tensor:
        return self.images.batch(self.order[k], self.gen, self.size, self.cfg.crop_scale, self.cfg.flip)


# ============================================================================ one search step
def search_step(model: nn.Module, layers: Sequence[str], logits: Mapping[str, torch.Tensor],
                x: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor, beta: float, lr: float,
                amp: bool = False) -> dict[str, torch.Tensor]:
    """One NAD update for every row (class) present in the batch; updates `logits` in place.

    `logits[layer]` is (R, C); `rows[i]` is the row of image i and `labels[i]` its class. Each row's
    loss is upstream's one-class loss on its own images; rows without a correctly classified image
    are skipped (no step). Returns per-row tensors: loss, ce, mse, reg, stepped (bool).
    """
    dev = x.device
    L = len(layers)
    R = next(iter(logits.values())).shape[0]
    counts = torch.bincount(rows, minlength=R).float()
    with torch.no_grad(), autocast(dev, amp, cpu=True), trace(model, layers, detach=True) as t0:
        orig_logits = model(x).float()
    orig = {name: t0[name].float() for name in layers}
    correct = orig_logits.argmax(1) == labels
    n_correct = torch.bincount(rows[correct], minlength=R).float()
    active = (counts > 0) & (n_correct > 0)
    sample_active = active[rows]

    leaves = {name: logits[name].detach().requires_grad_(True) for name in layers}
    gates = {name: torch.sigmoid(leaves[name])[rows] for name in layers}
    with autocast(dev, amp, cpu=True), channel_gates(model, gates, capture=layers) as tg:
        out = model(x).float()
    ce_i = F.cross_entropy(out, labels, reduction="none")
    w_ce = sample_active.float() / counts[rows].clamp_min(1)
    ce_row = torch.zeros(R, device=dev).index_add_(0, rows, ce_i * w_ce)
    mse_row = torch.zeros(R, device=dev)
    w_mse = (correct & sample_active).float() / n_correct[rows].clamp_min(1)
    for name in layers:
        err = (tg[name].float() - orig[name]).pow(2).flatten(1).mean(1)
        mse_row = mse_row.index_add(0, rows, err * w_mse)
    reg_row = sum(torch.sigmoid(leaves[name]).pow(2).mean(1) for name in layers) / L
    act_row = (ce_row + mse_row) / L
    loss_row = act_row + beta * reg_row
    total = (loss_row * active.float()).sum()
    if bool(active.any()):
        grads = torch.autograd.grad(total, [leaves[name] for name in layers])
        with torch.no_grad():
            for name, g in zip(layers, grads):
                step = lr * F.normalize(g.float(), dim=1)
                logits[name].sub_(step * active.float().unsqueeze(1))
    return {"loss": loss_row.detach(), "ce": ce_row.detach(), "mse": mse_row.detach(),
            "reg": reg_row.detach(), "stepped": active.detach()}


# ============================================================================ the search
@dataclasses.dataclass
class PathResult:
    """Learned paths of a set of classes: gate logits per layer (rows = `classes`), loss curves, metadata."""

    layers: list[str]
    classes: list[int]
    class_names: list[str]
    logits: dict[str, torch.Tensor]          # at path_epoch, (K, C) per layer
    final_logits: dict[str, torch.Tensor]    # after the last epoch
    history: pd.DataFrame | None             # per epoch and class: loss, ce, mse, reg, steps, skipped, kept
    meta: dict

    def hard(self) -> dict[str, torch.Tensor]:
        """Binary paths: (K, C) bool per layer, logit > 0 (sigmoid > 0.5)."""
        return {name: v > 0 for name, v in self.logits.items()}

    def row(self, c: int) -> int:
        if c not in self.classes:
            raise ParamError("classes", f"class {c} was not searched; searched: {self.classes}")
        return self.classes.index(c)

    def path(self, c: int) -> dict[str, torch.Tensor]:
        """The hard path of class c as 0/1 float gates per layer."""
        r = self.row(c)
        return {name: (v[r] > 0).float() for name, v in self.logits.items()}

    def keep_fraction(self) -> pd.DataFrame:
        """Fraction of kept channels, rows = class names, columns = layers."""
        data = {name: (v > 0).float().mean(1).numpy() for name, v in self.logits.items()}
        return pd.DataFrame(data, index=pd.Index([self.class_names[c] for c in self.classes], name="class"))

    def subset(self, classes: Sequence[int]) -> "PathResult":
        """The rows of `classes` only (a class's path does not depend on the other classes searched)."""
        rows = [self.row(c) for c in classes]
        pick = lambda d: {n: v[rows].clone() for n, v in d.items()}  # noqa: E731
        hist = self.history[self.history["class"].isin(list(classes))].reset_index(drop=True) \
            if self.history is not None else None
        return PathResult(self.layers, list(classes), self.class_names, pick(self.logits),
                          pick(self.final_logits), hist, dict(self.meta))

    def to_dict(self) -> dict:
        """Plain tensors and lists (what the cache stores)."""
        return {"layers": self.layers, "classes": self.classes, "class_names": self.class_names,
                "logits": self.logits, "final_logits": self.final_logits,
                "history": self.history.to_dict("list"), "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "PathResult":
        return cls(list(d["layers"]), list(d["classes"]), list(d["class_names"]), dict(d["logits"]),
                   dict(d["final_logits"]), pd.DataFrame(d["history"]), dict(d["meta"]))


def search(model: nn.Module, images: ImageSource, layers: Sequence[str], cfg: SearchConfig, input_size: int,
           class_names: Sequence[str] | None = None, checkpoint=None, batched: bool = True,
           stop_after_epoch: int | None = None, meta: dict | None = None) -> PathResult:
    """Learn the NAD paths of `cfg.classes` (all classes of `images` when None).

    `batched=True` searches all classes in one pass; `batched=False` runs upstream's one-class loop
    (same numbers, for tests and benchmarks; it does not checkpoint). `checkpoint` (an object with
    ``load()`` and ``save(state)``, e.g. `netanatomy.cache.Checkpoint`) gets the search's state after
    every epoch, and a search given a saved state resumes from its last finished epoch;
    `stop_after_epoch` ends early (to test resuming). Weights are neither changed nor given gradients.
    """
    dev = pick_device(cfg.device)
    model.to(dev)
    layers = list(layers)
    num_classes = int(images.targets.max()) + 1 if len(images) else 0
    classes = list(range(num_classes)) if cfg.classes is None else list(cfg.classes)
    bad = [c for c in classes if c >= num_classes]
    require(not bad, "classes", f"class indices {bad} are out of range; the data set has {num_classes} classes")
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    if not batched:
        return _concat([search(model, images, layers, cfg.replace(classes=[c]), input_size, names, None, True,
                               stop_after_epoch, meta) for c in classes])
    channels = layer_channels(model, layers, images.tile(0, input_size))
    streams = [_ClassStream(images, c, input_size, cfg, channels) for c in classes]
    logits = {name: torch.stack([s.init[name] for s in streams]).to(dev) for name in layers}
    path_logits: dict[str, torch.Tensor] | None = None
    records: list[dict] = []
    start = 0
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None and state.get("classes") == classes and state.get("config") == cfg.search_fields():
        start, path_logits = int(state["epoch"]), state["path_logits"]
        logits = {name: state["logits"][name].to(dev) for name in layers}
        records = pd.DataFrame(state["history"]).to_dict("records")
        for s, g in zip(streams, state["generators"]):
            s.gen.set_state(g)

    t_start = time.perf_counter()
    with frozen(model):
        bar = tqdm(range(start, cfg.epochs), desc=f"NAD search ({len(classes)} classes)", disable=not cfg.progress)
        for epoch in bar:
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
            records += _epoch(model, layers, logits, streams, classes, names, cfg, epoch, dev)
            if epoch + 1 == cfg.path_epoch:
                path_logits = {name: v.detach().cpu().clone() for name, v in logits.items()}
            done = [rec["loss"] for rec in records[-len(classes):] if rec["steps"] > 0]
            if done:
                bar.set_postfix(loss=float(np.mean(done)))
            if checkpoint is not None:
                checkpoint.save({"epoch": epoch + 1, "classes": classes, "config": cfg.search_fields(),
                                 "logits": {n: v.detach().cpu() for n, v in logits.items()},
                                 "path_logits": path_logits, "history": pd.DataFrame(records).to_dict("list"),
                                 "generators": [s.gen.get_state() for s in streams]})
    final = {name: v.detach().cpu().clone() for name, v in logits.items()}
    if path_logits is None:          # stopped early: the latest logits stand in
        path_logits = final
    info = {"package": "netanatomy", "version": __version__, "torch": str(torch.__version__),
            "method": "NAD (Hu et al. 2021)", "config": cfg.search_fields(), "channels": channels,
            "input_size": input_size, "seconds": time.perf_counter() - t_start, "batched": batched,
            "device": str(dev), "epochs_done": int(max([r["epoch"] for r in records], default=0)), **(meta or {})}
    return PathResult(layers, classes, names, path_logits, final, pd.DataFrame(records), info)


def _epoch(model: nn.Module, layers: list[str], logits: dict[str, torch.Tensor], streams: list[_ClassStream],
           classes: list[int], names: list[str], cfg: SearchConfig, epoch: int, dev: torch.device) -> list[dict]:
    """One epoch of the batched search (logits updated in place); one history record per class. The next
    step's images are read and augmented in a background thread while this step runs (each class's
    batches still come from its own generator in order, so the numbers are the same); on CUDA they
    are pinned and copied without blocking."""
    n_batches = [s.start_epoch() for s in streams]
    sums = {k: torch.zeros(len(classes)) for k in ("loss", "ce", "mse", "reg")}
    steps = torch.zeros(len(classes))
    seen = torch.zeros(len(classes))

    def fetch(k: int) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        here = [r for r, n in enumerate(n_batches) if k < n]
        xs = [streams[r].batch(k) for r in here]
        rows = torch.cat([torch.full((len(b),), r, dtype=torch.long) for r, b in zip(here, xs)])
        x = torch.cat(xs)
        return here, rows, x.pin_memory() if dev.type == "cuda" else x

    with ThreadPoolExecutor(1) as reader:
        pending = reader.submit(fetch, 0)
        for k in range(max(n_batches)):
            here, rows, x = pending.result()
            if k + 1 < max(n_batches):
                pending = reader.submit(fetch, k + 1)
            rows, x = rows.to(dev, non_blocking=True), x.to(dev, non_blocking=True)
            labels = torch.tensor(classes, dtype=torch.long, device=dev)[rows]
            stats = search_step(model, layers, logits, x, rows, labels, cfg.beta, cfg.lr, cfg.amp)
            stepped = stats["stepped"].cpu()
            for key in sums:
                sums[key] += stats[key].cpu() * stepped.float()
            steps += stepped.float()
            seen[here] += 1
    records = []
    for r, c in enumerate(classes):
        n = max(float(steps[r]), 1.0)
        records.append({"epoch": epoch + 1, "class": c, "class_name": names[c],
                        **{key: float(sums[key][r]) / n if steps[r] > 0 else float("nan") for key in sums},
                        "steps": int(steps[r]), "skipped": int(seen[r] - steps[r]),
                        "kept": float(np.mean([(logits[nm][r] > 0).float().mean().item() for nm in layers]))})
    return records


def _concat(parts: list[PathResult]) -> PathResult:
    first = parts[0]
    cat = lambda attr: {n: torch.cat([getattr(p, attr)[n] for p in parts]) for n in first.layers}  # noqa: E731
    meta = dict(first.meta, batched=False, seconds=sum(p.meta["seconds"] for p in parts))
    meta["config"] = dict(meta["config"], classes=[c for p in parts for c in p.classes])
    return PathResult(first.layers, [c for p in parts for c in p.classes], first.class_names, cat("logits"),
                      cat("final_logits"), pd.concat([p.history for p in parts], ignore_index=True), meta)


# ============================================================================ activation maps
def select_top(cam: torch.Tensor, mask_rate: float) -> torch.Tensor:
    """Exact top-k selection weights of (B, H, W) maps: k = round(mask_rate*H*W) pixels; pixels tied at the
    k-th value share the remaining weight equally. Each map's weights sum to k."""
    B = cam.shape[0]
    flat = cam.reshape(B, -1)
    k = max(1, int(round(mask_rate * flat.shape[1])))
    thr = flat.topk(k, dim=1).values[:, -1:]
    above = flat > thr
    ties = flat == thr
    share = (k - above.sum(1, keepdim=True)).float() / ties.sum(1, keepdim=True).clamp_min(1).float()
    return (above.float() + ties.float() * share).reshape(cam.shape)


def legacy_select(cam01: torch.Tensor, size: tuple[int, int], mask_rate: float) -> torch.Tensor:
    """Upstream's rule (cam_2x2.py): uint8 quantisation, PIL bicubic resize to `size`, keep the pixels
    strictly above the k-th largest, k = int(mask_rate * H * W) of that resized map."""
    out = []
    k = max(1, int(mask_rate * size[0] * size[1]))
    for m in cam01.cpu().numpy():
        q = np.uint8(m * 255)
        r = np.asarray(Image.fromarray(q).resize((size[1], size[0]), Image.BICUBIC), dtype=np.uint8) / 255
        thr = np.sort(r.reshape(-1))[-k]
        out.append(torch.from_numpy((r > thr).astype(np.float32)))
    return torch.stack(out)


def _cam01(act: torch.Tensor) -> torch.Tensor:
    """Channel sum, min-max normalised per image (a constant map gives zeros)."""
    cam = act.float().sum(1)
    lo = cam.flatten(1).min(1).values.view(-1, 1, 1)
    hi = cam.flatten(1).max(1).values.view(-1, 1, 1)
    span = hi - lo
    return torch.where(span > 0, (cam - lo) / span.clamp_min(1e-30), torch.zeros_like(cam))


def activation_maps(model: nn.Module, x: torch.Tensor, layers: Sequence[str],
                    gates: Mapping[str, torch.Tensor] | None = None, batch_size: int = 64,
                    resized: bool = True) -> dict[str, torch.Tensor]:
    """cam of each layer for images x: (N, H, W) maps in [0, 1].

    `gates[layer]` is a 0/1 path ((C,) or per-image (N, C)); None gives the original network. With
    `resized` the maps are resized to the input size (bicubic, clamped to [0, 1]), else they stay at
    the layer's resolution (the legacy rule resizes them itself).
    """
    dev = _model_device(model)
    out: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    size = x.shape[-2:]
    with frozen(model), torch.no_grad():
        for s in range(0, len(x), batch_size):
            g = {name: (v[s:s + batch_size] if v.dim() == 2 else v).to(dev) for name, v in (gates or {}).items()}
            with channel_gates(model, g, capture=layers) as t:
                model(x[s:s + batch_size].to(dev))
            for name in layers:
                cam = _cam01(t[name])
                if resized:
                    cam = F.interpolate(cam.unsqueeze(1), size=size, mode="bicubic", align_corners=False)
                    cam = cam.squeeze(1).clamp(0, 1)
                out[name].append(cam.cpu())
    return {n: torch.cat(v) for n, v in out.items()}


def quadrant_shares(selection: torch.Tensor) -> torch.Tensor:
    """Share of each map's selected pixels in the quadrants (TL, TR, BL, BR): (B, 4), rows sum to 1
    (0.25 each when nothing is selected)."""
    B, H, W = selection.shape
    h, w = H // 2, W // 2
    parts = [selection[:, :h, :w], selection[:, :h, w:], selection[:, h:, :w], selection[:, h:, w:]]
    sums = torch.stack([p.reshape(B, -1).sum(1) for p in parts], 1)
    total = sums.sum(1, keepdim=True)
    return torch.where(total > 0, sums / total.clamp_min(1e-30), torch.full_like(sums, 0.25))


# ============================================================================ mosaics and hit rates
@dataclasses.dataclass
class Mosaics:
    """2x2 mosaics: images (M, 3, S, S) normalised as the model sees them (S = tile, upstream's resize, or
    2 x tile), classes (M, 4) in TL, TR, BL, BR order, source indices, tile size."""

    images: torch.Tensor
    classes: np.ndarray
    indices: np.ndarray
    tile: int


def make_mosaics(images: ImageSource, n: int = UPSTREAM_N_MOSAICS, tile: int = 64, seed: int = 0,
                 classes: Sequence[int] | None = None, resize: bool = True) -> Mosaics:
    """`n` mosaics of 4 distinct random classes (among `classes`), one random image per class, tiles
    TL, TR, BL, BR at offsets (0,0), (0,T), (T,0), (T,T) of a 2T x 2T mosaic; with `resize` (upstream)
    the mosaic is then resized to T x T (bilinear, antialiased) before the forward pass."""
    require(isinstance(n, int) and n >= 1, "n_mosaics", f"must be an integer >= 1, got {n!r}")
    pool = sorted(set(images.targets.tolist())) if classes is None else list(classes)
    require(len(pool) >= 4, "classes", f"2x2 mosaics need at least 4 classes, got {len(pool)}")
    rng = np.random.default_rng(seed)
    by_class = {c: images.indices_of(c) for c in pool}
    cls = np.zeros((n, 4), np.int64)
    idx = np.zeros((n, 4), np.int64)
    out = []
    for m in range(n):
        cls[m] = rng.choice(pool, 4, replace=False)
        tiles = []
        for q in range(4):
            idx[m, q] = rng.choice(by_class[int(cls[m, q])])
            tiles.append(images.tile(int(idx[m, q]), tile))
        out.append(torch.cat([torch.cat(tiles[:2], 2), torch.cat(tiles[2:], 2)], 1))
    mosaics = torch.stack(out)
    if resize:
        mosaics = F.interpolate(mosaics, size=(tile, tile), mode="bilinear", align_corners=False, antialias=True)
    return Mosaics(mosaics, cls, idx, tile)


def mosaic_selection(model: nn.Module, result: PathResult, x: torch.Tensor, rows: torch.Tensor, mask_rate: float,
                     legacy: bool = False, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Top-pixel selections of images x (B, 3, H, W), image i gated by the path of result row rows[i]:
    (B, H, W) per layer, exact (`select_top`) or upstream's rule (`legacy_select`)."""
    gates = {name: v.float()[rows] for name, v in result.hard().items()}
    if legacy:
        raw = activation_maps(model, x, result.layers, gates, batch_size, resized=False)
        return {n: legacy_select(v, tuple(x.shape[-2:]), mask_rate) for n, v in raw.items()}
    cams = activation_maps(model, x, result.layers, gates, batch_size)
    return {n: select_top(v, mask_rate) for n, v in cams.items()}


def hit_rates(model: nn.Module, result: PathResult, mosaics: Mosaics, mask_rate: float = UPSTREAM_MOSAIC_MASK_RATE,
              legacy: bool = False, batch_size: int = 128, progress: bool = True) -> pd.DataFrame:
    """Per gated layer: hit rate of each mosaic (mean over its 4 quadrants of the share of the top
    `mask_rate` pixels of the quadrant class's map inside that quadrant). Long table: layer, mosaic, hit."""
    require(0 < mask_rate <= 1, "mask_rate", f"must be in (0, 1], got {mask_rate}")
    missing = sorted(set(mosaics.classes.reshape(-1).tolist()) - set(result.classes))
    if missing:
        raise ParamError("classes", f"mosaics use classes {missing} that have no learned path")
    M = len(mosaics.images)
    x_all = mosaics.images.repeat_interleave(4, dim=0)                        # (4M, ...) mosaic m quadrant q
    r_all = torch.as_tensor(np.vectorize(result.row)(mosaics.classes).reshape(-1))
    q_all = torch.arange(4).repeat(M)
    shares = {name: [] for name in result.layers}
    chunk = max(4, batch_size - batch_size % 4)
    for s in tqdm(range(0, len(x_all), chunk), desc="NAD hit rates", disable=not progress, leave=False):
        sel = mosaic_selection(model, result, x_all[s:s + chunk], r_all[s:s + chunk], mask_rate, legacy,
                               batch_size)
        for name in result.layers:
            shares[name].append(quadrant_shares(sel[name]))
    records = []
    for li, name in enumerate(result.layers):
        sh = torch.cat(shares[name])                                          # (4M, 4)
        own = sh[torch.arange(len(sh)), q_all].reshape(M, 4).mean(1)
        records += [{"layer": name, "layer_index": li + 1, "mosaic": m, "hit": float(own[m])} for m in range(M)]
    return pd.DataFrame(records)


# ============================================================================ sub-architecture similarity
def iou_matrix(result: PathResult) -> np.ndarray:
    """Layer-averaged IoU of the classes' binary channel sets: (K, K), symmetric, in [0, 1], diagonal 1
    (two empty sets count as identical: IoU 1)."""
    K = len(result.classes)
    total = torch.zeros(K, K, dtype=torch.float64)
    for v in result.hard().values():
        a = v.double()
        inter = a @ a.T
        union = a.sum(1, keepdim=True) + a.sum(1, keepdim=True).T - inter
        total += torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
    return (total / len(result.layers)).numpy()


def top_similar(sim: np.ndarray, k: int = 3) -> np.ndarray:
    """For each row, the k most similar other rows (ties broken by lower index)."""
    K = sim.shape[0]
    out = np.zeros((K, min(k, K - 1)), np.int64)
    for i in range(K):
        order = sorted((j for j in range(K) if j != i), key=lambda j: (-sim[i, j], j))
        out[i] = order[:out.shape[1]]
    return out
