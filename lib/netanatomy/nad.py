"""NAD: Architecture Disentanglement for Deep Neural Networks (Hu et al., ICCV 2021).

Upstream code: hujiecpp/NAD (findpath.py, cam_1x1.py, cam_2x2.py, similarSubArch.py). This module
implements the method as the upstream code does it, with a batched search that learns the paths of
many classes in one pass.

Path search (`search`, `find_paths`). The classifier is frozen (eval mode, no weight gradients).
Each class c holds one real gate logit per output channel of every gated layer (initialised
N(0, 1)); during the search a channel's output is multiplied by sigmoid(logit). The loss of a batch
of class-c images, with L gated layers and S the images the original network classifies correctly,
is ``(CE(gated logits, c) on all images + sum_l MSE(gated act_l, original act_l) on S) / L +
beta * (sum_l mean_channels sigmoid(logit_l)^2) / L``; a batch with S empty is skipped. There is no
optimizer: every layer's logit vector moves by ``lr`` along its L2-normalised gradient. The path of
class c is the binary gate ``logit > 0`` read after `path_epoch` epochs.

Batched search. All requested classes are searched in one pass: each image carries its own class's
gates (per-sample gates of shape (N, C)), the loss is the sum of the per-class losses (each exactly
the one-class loss above, so gradients do not mix), and the per-class, per-layer normalised step is
applied to every class at once. Each class draws its images, crops and flips from its own generator
seeded with ``seed + class index``, so a class's path does not depend on which other classes ran,
and the batched search equals the one-class loop on identical batches.

Activation maps (`activation_maps`). Forward with a class's hard path, sum the gated layer's output
over channels, min-max normalise per image, resize to the input size (bicubic); the top
``mask_rate`` pixels are selected. By default the selection is exact: the k = round(mask_rate * H *
W) largest pixels, with pixels tied at the k-th value sharing the remaining weight equally (so a
constant map, e.g. an empty path, gives every quadrant exactly the chance share 0.25 and never NaN).
``legacy=True`` reproduces upstream: the map is quantised to uint8, resized with PIL (bicubic), and
the pixels strictly greater than the k-th largest value are kept, with k = int(mask_rate * tile
area) (upstream counts k from one 224 x 224 tile also on the 448 x 448 mosaic); if no pixel is kept
the shares are 0.25 each instead of upstream's NaN.

Conventions. IoU of two empty channel sets is 1 (identical sets); layer-averaged IoU is in [0, 1]
and symmetric with diagonal 1.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .errors import DataError, ParamError, require
from .hooks import channel_gates, trace
from .runtime import atomic_save, autocast, cache_dir, cache_key, pick_device, weights_fingerprint

#: beta defaults of upstream findpath.py, keyed by (dataset, model).
UPSTREAM_BETA: dict[tuple[str, str], float] = {
    ("imagenet", "vgg16"): 4.5, ("imagenet", "resnet50"): 0.02, ("imagenet", "densenet121"): 0.02,
    ("places365", "vgg16"): 5.0, ("places365", "resnet50"): 0.02, ("places365", "densenet121"): 0.02,
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


def default_beta(model: str, dataset: str) -> float | None:
    """Upstream's beta for (model, dataset), or None when upstream has none."""
    return UPSTREAM_BETA.get((dataset, model))


# ============================================================================ configuration
@dataclasses.dataclass
class SearchConfig:
    """Settings of one path search (defaults are upstream's findpath.py)."""

    beta: float = 4.5                 # weight of the path-size regulariser
    lr: float = 0.1                   # length of every layer's normalised logit step
    epochs: int = 21                  # epochs over each class's own training images
    batch_size: int = 16              # images per class per step
    classes: Sequence[int] | None = None   # class indices to search (None: all)
    seed: int = 0                     # class c uses generator seed + c (init, order, crops, flips)
    path_epoch: int | None = 20       # the path is read after this many epochs (None: the last)
    images_per_class: int | None = None    # use only the first n training images of each class (None: all)
    crop_scale: tuple[float, float] = (0.08, 1.25)   # RandomResizedCrop scale range (upstream)
    flip: bool = True                 # random horizontal flip
    amp: bool = True                  # bf16 autocast on CUDA (never on CPU)
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        require(isinstance(self.beta, (int, float)) and not isinstance(self.beta, bool)
                and math.isfinite(self.beta) and self.beta >= 0, "beta",
                f"must be a finite number >= 0, got {self.beta!r}")
        require(isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0, "lr",
                f"must be a positive number, got {self.lr!r}")
        require(isinstance(self.epochs, int) and not isinstance(self.epochs, bool) and self.epochs >= 1,
                "epochs", f"must be an integer >= 1, got {self.epochs!r}")
        require(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size",
                f"must be an integer >= 1, got {self.batch_size!r}")
        require(isinstance(self.seed, int) and self.seed >= 0, "seed", f"must be an integer >= 0, got {self.seed!r}")
        if self.path_epoch is None:
            self.path_epoch = self.epochs
        require(isinstance(self.path_epoch, int) and 1 <= self.path_epoch <= self.epochs, "path_epoch",
                f"must be an integer in [1, epochs={self.epochs}] (or None for the last), got {self.path_epoch!r}")
        require(self.images_per_class is None or (isinstance(self.images_per_class, int) and self.images_per_class >= 1),
                "images_per_class", f"must be None or an integer >= 1, got {self.images_per_class!r}")
        lo, hi = self.crop_scale
        require(0 < lo <= hi, "crop_scale", f"must be (low, high) with 0 < low <= high, got {self.crop_scale!r}")
        self.crop_scale = (float(lo), float(hi))
        if self.classes is not None:
            if isinstance(self.classes, int):
                self.classes = [self.classes]
            classes = list(self.classes)
            require(len(classes) > 0 and all(isinstance(c, (int, np.integer)) and c >= 0 for c in classes),
                    "classes", f"must be None or a non-empty list of class indices >= 0, got {self.classes!r}")
            require(len(set(classes)) == len(classes), "classes", f"has duplicates: {classes}")
            self.classes = [int(c) for c in classes]

    def key_fields(self) -> dict:
        """Fields that decide the result (for cache keys): everything but device, amp and progress."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("device", "progress", "amp")}


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


def layer_channels(model: nn.Module, layers: Sequence[str], example: torch.Tensor | int) -> dict[str, int]:
    """Output channels of each gated layer (one dry forward of `example`, an image (C, H, W) or a
    size for a zero RGB image)."""
    if isinstance(example, int):
        example = torch.zeros(3, example, example)
    dev = _model_device(model)
    with frozen(model), torch.no_grad(), trace(model, layers, detach=True) as t:
        model(example.unsqueeze(0).to(dev))
    return {name: int(t[name].shape[1]) for name in layers}


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# ============================================================================ per-class image access
def _normalisation(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std the dataset's own transform uses (ConceptWorld, a Normalize in a Compose, else ImageNet's)."""
    base = getattr(ds, "dataset", ds)
    if hasattr(base, "_mean") and hasattr(base, "_std"):
        return base._mean.reshape(3).float(), base._std.reshape(3).float()
    transform = getattr(base, "transform", None)
    for t in getattr(transform, "transforms", [transform]):
        if t is not None and type(t).__name__ == "Normalize":
            return torch.tensor(t.mean, dtype=torch.float32), torch.tensor(t.std, dtype=torch.float32)
    return torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)


def _targets(ds) -> np.ndarray:
    """Class index of every item of a dataset (targets / labels attribute, Subsets resolved)."""
    if isinstance(ds, torch.utils.data.Subset):
        return _targets(ds.dataset)[np.asarray(ds.indices)]
    for attr in ("targets", "labels"):
        if hasattr(ds, attr):
            return np.asarray(getattr(ds, attr), dtype=np.int64)
    if isinstance(ds, torch.utils.data.TensorDataset):
        return ds.tensors[1].cpu().numpy().astype(np.int64)
    return np.asarray([int(ds[i][1]) for i in range(len(ds))], dtype=np.int64)


class ImageSource:
    """Raw images of a dataset for NAD's own augmentation and mosaics.

    `raw(i)` gives a uint8 (3, H, W) tensor when the dataset exposes its raw pixels (the concept
    world's array, an ImageFolder's files), else the dataset's own (already normalised) float tensor.
    `prepare(img, crop)` finishes an image: scale to [0, 1] and normalise with the dataset's constants.
    """

    def __init__(self, ds):
        self.ds = ds
        self.targets = _targets(ds)
        self.mean, self.std = _normalisation(ds)
        base, index_map = ds, None
        if isinstance(ds, torch.utils.data.Subset) and not isinstance(ds.dataset, torch.utils.data.Subset):
            base, index_map = ds.dataset, np.asarray(ds.indices)
        self._base, self._map = base, index_map

    def __len__(self) -> int:
        return len(self.targets)

    def indices_of(self, c: int) -> np.ndarray:
        return np.flatnonzero(self.targets == c)

    def raw(self, i: int) -> torch.Tensor:
        j = int(self._map[i]) if self._map is not None else int(i)
        base = self._base
        images = getattr(base, "images", None)
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[-1] == 3:
            return torch.from_numpy(np.ascontiguousarray(images[j].transpose(2, 0, 1)))
        if hasattr(base, "samples") and hasattr(base, "loader"):
            from torchvision.transforms.functional import pil_to_tensor
            return pil_to_tensor(base.loader(base.samples[j][0]).convert("RGB"))
        item = self.ds[i][0]
        return item if isinstance(item, torch.Tensor) else torch.as_tensor(np.asarray(item))

    def finish(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 -> normalised float; float images are taken as already normalised."""
        if img.dtype == torch.uint8:
            return (img.float().div_(255) - self.mean.view(3, 1, 1)) / self.std.view(3, 1, 1)
        return img.float()


def crop_params(gen: torch.Generator, height: int, width: int, scale=(0.08, 1.25),
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


def augment(img: torch.Tensor, gen: torch.Generator, size: int, scale=(0.08, 1.25), flip: bool = True) -> torch.Tensor:
    """RandomResizedCrop(size, scale) + RandomHorizontalFlip on one (3, H, W) image, drawn from `gen`."""
    from torchvision.transforms.functional import resized_crop
    i, j, h, w = crop_params(gen, img.shape[-2], img.shape[-1], scale)
    out = resized_crop(img, i, j, h, w, [size, size], antialias=True)
    if flip and torch.rand(1, generator=gen).item() < 0.5:
        out = out.flip(-1)
    return out


class _ClassStream:
    """One class's training stream: its generator draws the logit init, the epoch order, crops and flips."""

    def __init__(self, source: ImageSource, c: int, seed: int, batch_size: int, size: int,
                 cfg: SearchConfig, channels: Mapping[str, int]):
        self.c, self.source, self.size, self.cfg = c, source, size, cfg
        self.indices = source.indices_of(c)
        if cfg.images_per_class is not None:
            self.indices = self.indices[:cfg.images_per_class]
        if len(self.indices) == 0:
            raise DataError(f"class {c}", "has no training images", "at least one image per searched class")
        self.gen = torch.Generator().manual_seed(seed + c)
        self.init = {name: torch.randn(n, generator=self.gen) for name, n in channels.items()}
        self.batch_size = batch_size
        self.order: list[np.ndarray] = []

    def start_epoch(self) -> int:
        perm = torch.randperm(len(self.indices), generator=self.gen).numpy()
        idx = self.indices[perm]
        self.order = [idx[k:k + self.batch_size] for k in range(0, len(idx), self.batch_size)]
        return len(self.order)

    def batch(self, k: int) -> torch.Tensor:
        imgs = [augment(self.source.raw(int(i)), self.gen, self.size, self.cfg.crop_scale, self.cfg.flip)
                for i in self.order[k]]
        return torch.stack([self.source.finish(im) for im in imgs])


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
    with torch.no_grad(), autocast(dev, amp), trace(model, layers, detach=True) as t0:
        orig_logits = model(x).float()
    orig = {name: t0[name].float() for name in layers}
    correct = orig_logits.argmax(1) == labels
    n_correct = torch.bincount(rows[correct], minlength=R).float()
    active = (counts > 0) & (n_correct > 0)
    sample_active = active[rows]

    leaves = {name: logits[name].detach().requires_grad_(True) for name in layers}
    gates = {name: torch.sigmoid(leaves[name])[rows] for name in layers}
    with autocast(dev, amp), channel_gates(model, gates, capture=layers) as tg:
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


# ============================================================================ the search loop
@dataclasses.dataclass
class PathResult:
    """Learned paths of a set of classes: gate logits per layer (rows = `classes`), loss curves, metadata."""

    layers: list[str]
    classes: list[int]
    class_names: list[str]
    logits: dict[str, torch.Tensor]          # at path_epoch, (K, C) per layer
    final_logits: dict[str, torch.Tensor]    # after the last epoch
    history: pd.DataFrame                    # per epoch and class: loss, ce, mse, reg, steps, skipped
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

    def save(self, path: str | Path) -> Path:
        return atomic_save(self.to_dict(), path)

    def to_dict(self) -> dict:
        return {"layers": self.layers, "classes": self.classes, "class_names": self.class_names,
                "logits": self.logits, "final_logits": self.final_logits,
                "history": self.history.to_dict("list"), "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "PathResult":
        return cls(list(d["layers"]), list(d["classes"]), list(d["class_names"]), dict(d["logits"]),
                   dict(d["final_logits"]), pd.DataFrame(d["history"]), dict(d["meta"]))

    @classmethod
    def load(cls, path: str | Path) -> "PathResult":
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "NAD result file not found", "a file written by PathResult.save")
        return cls.from_dict(torch.load(path, map_location="cpu", weights_only=True))


def search(model: nn.Module, train_ds, layers: Sequence[str], cfg: SearchConfig, input_size: int,
           class_names: Sequence[str] | None = None, checkpoint: str | Path | None = None,
           batched: bool = True, stop_after_epoch: int | None = None, meta: dict | None = None) -> PathResult:
    """Learn the NAD paths of `cfg.classes` (all classes of `train_ds` when None).

    `batched=True` searches all classes in one pass; `batched=False` runs upstream's one-class loop
    (same numbers, for tests and benchmarks). With `checkpoint`, a checkpoint is written atomically
    after every epoch and a later call resumes from the last finished epoch; `stop_after_epoch`
    ends early (to test resuming). Weights are neither changed nor given gradients.
    """
    dev = pick_device(cfg.device)
    model.to(dev)
    layers = list(layers)
    source = ImageSource(train_ds)
    num_classes = int(source.targets.max()) + 1 if len(source) else 0
    classes = list(range(num_classes)) if cfg.classes is None else list(cfg.classes)
    bad = [c for c in classes if c >= num_classes]
    if bad:
        raise ParamError("classes", f"class indices {bad} are out of range; the data set has {num_classes} classes")
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    channels = layer_channels(model, layers, tile_image(source, 0, input_size))
    if not batched:
        parts = [search(model, train_ds, layers, dataclasses.replace(cfg, classes=[c]), input_size, names,
                        None if checkpoint is None else Path(str(checkpoint) + f".class{c}"), True,
                        stop_after_epoch, meta) for c in classes]
        return _concat(parts)

    streams = [_ClassStream(source, c, cfg.seed, cfg.batch_size, input_size, cfg, channels) for c in classes]
    logits = {name: torch.stack([s.init[name] for s in streams]).to(dev) for name in layers}
    path_logits: dict[str, torch.Tensor] | None = None
    records: list[dict] = []
    start = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state.get("classes") == classes and state.get("config") == _jsonable_cfg(cfg):
            start = int(state["epoch"])
            logits = {name: state["logits"][name].to(dev) for name in layers}
            path_logits = state["path_logits"]
            records = pd.DataFrame(state["history"]).to_dict("records")
            for s, g in zip(streams, state["generators"]):
                s.gen.set_state(g)

    t_start = time.perf_counter()
    with frozen(model):
        bar = tqdm(range(start, cfg.epochs), desc=f"NAD search ({len(classes)} classes)", disable=not cfg.progress)
        for epoch in bar:
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
            n_batches = [s.start_epoch() for s in streams]
            sums = {k: torch.zeros(len(classes)) for k in ("loss", "ce", "mse", "reg")}
            steps = torch.zeros(len(classes))
            seen = torch.zeros(len(classes))
            for k in range(max(n_batches)):
                here = [r for r, n in enumerate(n_batches) if k < n]
                xs = [streams[r].batch(k) for r in here]
                rows = torch.cat([torch.full((len(b),), r, dtype=torch.long) for r, b in zip(here, xs)]).to(dev)
                labels = torch.tensor(classes, dtype=torch.long, device=dev)[rows]
                x = torch.cat(xs).to(dev, non_blocking=True)
                stats = search_step(model, layers, logits, x, rows, labels, cfg.beta, cfg.lr, cfg.amp)
                stepped = stats["stepped"].cpu()
                for key in sums:
                    sums[key] += stats[key].cpu() * stepped.float()
                steps += stepped.float()
                seen[here] += 1
            for r, c in enumerate(classes):
                n = max(float(steps[r]), 1.0)
                records.append({"epoch": epoch + 1, "class": c, "class_name": names[c],
                                **{key: float(sums[key][r]) / n if steps[r] > 0 else float("nan") for key in sums},
                                "steps": int(steps[r]), "skipped": int(seen[r] - steps[r]),
                                "kept": float(np.mean([(logits[nm][r] > 0).float().mean().item() for nm in layers]))})
            if epoch + 1 == cfg.path_epoch:
                path_logits = {name: v.detach().cpu().clone() for name, v in logits.items()}
            done = [rec["loss"] for rec in records[-len(classes):] if rec["steps"] > 0]
            if done:
                bar.set_postfix(loss=float(np.mean(done)))
            if ckpt is not None:
                atomic_save({"epoch": epoch + 1, "classes": classes, "config": _jsonable_cfg(cfg),
                             "logits": {n: v.detach().cpu() for n, v in logits.items()},
                             "path_logits": path_logits, "history": pd.DataFrame(records).to_dict("list"),
                             "generators": [s.gen.get_state() for s in streams]}, ckpt)
    final = {name: v.detach().cpu().clone() for name, v in logits.items()}
    if path_logits is None:          # stopped early: the latest logits stand in
        path_logits = final
    info = {"package": "netanatomy", "version": __version__, "torch": str(torch.__version__), "method": "NAD (Hu et al. 2021)",
            "config": _jsonable_cfg(cfg), "channels": channels, "input_size": input_size,
            "seconds": time.perf_counter() - t_start, "batched": batched, "device": str(dev),
            "epochs_done": int(max([r["epoch"] for r in records], default=0)), **(meta or {})}
    return PathResult(layers, classes, names, path_logits, final, pd.DataFrame(records), info)


def _jsonable_cfg(cfg: SearchConfig) -> dict:
    d = cfg.key_fields()
    d["crop_scale"] = list(d["crop_scale"])
    return d


def _concat(parts: list[PathResult]) -> PathResult:
    first = parts[0]
    cat = lambda attr: {n: torch.cat([getattr(p, attr)[n] for p in parts]) for n in first.layers}  # noqa: E731
    meta = dict(first.meta, batched=False, seconds=sum(p.meta["seconds"] for p in parts))
    meta["config"] = dict(meta["config"], classes=[c for p in parts for c in p.classes])
    return PathResult(first.layers, [c for p in parts for c in p.classes], first.class_names, cat("logits"),
                      cat("final_logits"), pd.concat([p.history for p in parts], ignore_index=True), meta)


# ============================================================================ cached search on a subject
def paths_key(subject, cfg: SearchConfig, layers: Sequence[str]) -> str:
    """Cache key of a search: model weights, data set, layers and the search configuration."""
    return cache_key(method="nad-paths", version=1, model=subject.model_name, weights=weights_fingerprint(subject.model),
                     dataset=subject.dataset, n_train=len(subject.train_ds), input_size=subject.input_size,
                     layers=list(layers), cfg=_jsonable_cfg(cfg))


def find_paths(subject, cfg: SearchConfig, layers: Sequence[str] | str = "nad", cache: bool = True) -> PathResult:
    """The NAD paths of `subject` (a `zoo.Subject`) by `cfg`, loaded from the cache when this exact
    configuration ran before (any notebook), else searched (resuming from the last finished epoch)."""
    from . import models
    names = models.resolve_layers(subject.model, subject.model_name, layers)
    key = paths_key(subject, cfg, names)
    folder = cache_dir("nad", "paths")
    final = folder / f"{subject.model_name}-{key}.pt"
    if cache and final.exists():
        try:
            return PathResult.load(final)
        except Exception:  # noqa: BLE001 - a damaged cache file is recomputed
            pass
    result = search(subject.model, subject.train_ds, names, cfg, subject.input_size, subject.classes,
                    checkpoint=folder / f"{subject.model_name}-{key}.ckpt" if cache else None,
                    meta={"model": subject.model_name, "dataset": subject.dataset, "cache_key": key})
    if cache:
        result.save(final)
        (folder / f"{subject.model_name}-{key}.ckpt").unlink(missing_ok=True)
    return result


def beta_sweep(subject, cfg: SearchConfig, betas: Sequence[float], layers: Sequence[str] | str = "nad") -> pd.DataFrame:
    """Kept-channel fraction per layer (mean over classes) for each beta (each search cached)."""
    rows = []
    for b in betas:
        res = find_paths(subject, dataclasses.replace(cfg, beta=float(b)), layers)
        kf = res.keep_fraction()
        for layer in res.layers:
            rows.append({"beta": float(b), "layer": layer, "kept_fraction": float(kf[layer].mean())})
        rows.append({"beta": float(b), "layer": "all layers",
                     "kept_fraction": float(sum(res.hard()[n].sum() for n in res.layers) /
                                            sum(res.hard()[n].numel() for n in res.layers))})
    return pd.DataFrame(rows)


def random_paths(result: PathResult, seed: int = 0) -> PathResult:
    """A random-path control: per class and layer, as many channels kept as the learned path keeps, chosen at random."""
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


def _legacy_select(cam01: torch.Tensor, size: tuple[int, int], mask_rate: float, ref_area: int,
                   resample: str = "bicubic") -> torch.Tensor:
    """Upstream's rule: uint8 quantisation, PIL resize, keep pixels strictly above the k-th largest."""
    from PIL import Image
    mode = {"bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}[resample]
    out = []
    k = max(1, int(mask_rate * ref_area))
    for m in cam01.cpu().numpy():
        q = np.uint8(m * 255)
        r = np.asarray(Image.fromarray(q).resize((size[1], size[0]), mode), dtype=np.uint8) / 255
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
                    gates: Mapping[str, torch.Tensor] | None = None, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """cam of each layer for images x: (N, H, W) maps in [0, 1] at the input size (bicubic, clamped).

    `gates[layer]` is a 0/1 path ((C,) or per-image (N, C)); None gives the original network.
    """
    dev = _model_device(model)
    out: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    size = x.shape[-2:]
    with frozen(model), torch.no_grad():
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size].to(dev)
            g = {}
            for name, v in (gates or {}).items():
                g[name] = (v[s:s + batch_size] if v.dim() == 2 else v).to(dev)
            with channel_gates(model, g, capture=layers) as t:
                model(xb)
            for name in layers:
                cam = _cam01(t[name])
                cam = F.interpolate(cam.unsqueeze(1), size=size, mode="bicubic", align_corners=False).squeeze(1)
                out[name].append(_cam01_raw(cam).cpu())
    return {n: torch.cat(v) for n, v in out.items()}


def _cam01_raw(cam: torch.Tensor) -> torch.Tensor:
    return cam.clamp(0, 1)


def _raw_cams(model, x, layers, gates, batch_size=64) -> dict[str, torch.Tensor]:
    """Normalised cams at feature resolution (before resizing), for the legacy rule."""
    dev = _model_device(model)
    out: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    with frozen(model), torch.no_grad():
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size].to(dev)
            g = {name: (v[s:s + batch_size] if v.dim() == 2 else v).to(dev) for name, v in (gates or {}).items()}
            with channel_gates(model, g, capture=layers) as t:
                model(xb)
            for name in layers:
                out[name].append(_cam01(t[name]).cpu())
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
    """2x2 mosaics: images (M, 3, 2T, 2T) normalised, classes (M, 4) in TL, TR, BL, BR order, source indices."""

    images: torch.Tensor
    classes: np.ndarray
    indices: np.ndarray
    tile: int


def tile_image(source: ImageSource, i: int, tile: int) -> torch.Tensor:
    """One validation image resized to tile x tile (antialiased) and normalised."""
    from torchvision.transforms.functional import resize
    img = source.raw(i)
    if tuple(img.shape[-2:]) != (tile, tile):
        img = resize(img, [tile, tile], antialias=True)
    return source.finish(img)


def make_mosaics(val_ds, n: int = 100, tile: int = 64, seed: int = 0, classes: Sequence[int] | None = None) -> Mosaics:
    """`n` mosaics of 4 distinct random classes (among `classes`), one random image per class, tiles
    TL, TR, BL, BR at offsets (0,0), (0,T), (T,0), (T,T)."""
    require(isinstance(n, int) and n >= 1, "n_mosaics", f"must be an integer >= 1, got {n!r}")
    source = ImageSource(val_ds)
    pool = sorted(set(source.targets.tolist())) if classes is None else list(classes)
    require(len(pool) >= 4, "classes", f"2x2 mosaics need at least 4 classes, got {len(pool)}")
    rng = np.random.default_rng(seed)
    by_class = {c: source.indices_of(c) for c in pool}
    cls = np.zeros((n, 4), np.int64)
    idx = np.zeros((n, 4), np.int64)
    images = None
    for m in range(n):
        cls[m] = rng.choice(pool, 4, replace=False)
        for q in range(4):
            idx[m, q] = rng.choice(by_class[int(cls[m, q])])
            r, c = divmod(q, 2)
            t = tile_image(source, int(idx[m, q]), tile)
            if images is None:
                images = torch.zeros(n, t.shape[0], 2 * tile, 2 * tile)
            images[m, :, r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = t
    return Mosaics(images, cls, idx, tile)


def hit_rates(model: nn.Module, result: PathResult, mosaics: Mosaics, mask_rate: float = 0.1,
              legacy: bool = False, batch_size: int = 64, progress: bool = True) -> pd.DataFrame:
    """Per gated layer: hit rate of each mosaic (mean over its 4 quadrants of the share of the top
    `mask_rate` pixels of the quadrant class's map inside that quadrant). Long table: layer, mosaic, hit."""
    require(0 < mask_rate <= 1, "mask_rate", f"must be in (0, 1], got {mask_rate}")
    missing = sorted(set(mosaics.classes.reshape(-1).tolist()) - set(result.classes))
    if missing:
        raise ParamError("classes", f"mosaics use classes {missing} that have no learned path")
    M = len(mosaics.images)
    rows_of = np.vectorize(result.row)(mosaics.classes)                     # (M, 4)
    hard = {name: v.float() for name, v in result.hard().items()}
    records = []
    x_all = mosaics.images.repeat_interleave(4, dim=0)                        # (4M, ...) mosaic m quadrant q
    r_all = torch.as_tensor(rows_of.reshape(-1))
    q_all = torch.arange(4).repeat(M)
    shares = {name: [] for name in result.layers}
    chunk = max(4, batch_size - batch_size % 4)
    for s in tqdm(range(0, len(x_all), chunk), desc="NAD hit rates", disable=not progress, leave=False):
        xb, rb = x_all[s:s + chunk], r_all[s:s + chunk]
        gates = {name: hard[name][rb] for name in result.layers}
        if legacy:
            raw = _raw_cams(model, xb, result.layers, gates, batch_size)
            size = tuple(xb.shape[-2:])
            for name in result.layers:
                sel = _legacy_select(raw[name], size, mask_rate, mosaics.tile * mosaics.tile)
                shares[name].append(quadrant_shares(sel))
        else:
            cams = activation_maps(model, xb, result.layers, gates, batch_size)
            for name in result.layers:
                shares[name].append(quadrant_shares(select_top(cams[name], mask_rate)))
    for li, name in enumerate(result.layers):
        sh = torch.cat(shares[name])                                          # (4M, 4)
        own = sh[torch.arange(len(sh)), q_all].reshape(M, 4).mean(1)
        for m in range(M):
            records.append({"layer": name, "layer_index": li + 1, "mosaic": m, "hit": float(own[m])})
    return pd.DataFrame(records)


def summarize_hits(long: pd.DataFrame, label: str | None = None) -> pd.DataFrame:
    """Mean and std over mosaics per layer (as upstream prints them)."""
    out = long.groupby(["layer_index", "layer"], sort=True)["hit"].agg(["mean", "std"]).reset_index()
    out["std"] = long.groupby(["layer_index", "layer"], sort=True)["hit"].std(ddof=0).values
    if label is not None:
        out.insert(0, "paths", label)
    return out


def single_image_maps(model: nn.Module, result: PathResult, val_ds, c: int, index: int = 0, mask_rate: float = 0.05,
                      tile: int | None = None) -> dict:
    """cam_1x1: one validation image of class c; maps per layer with the class path and with the original net."""
    source = ImageSource(val_ds)
    idx = source.indices_of(c)
    require(len(idx) > index, "index", f"class {c} has {len(idx)} validation images")
    i = int(idx[index])
    size = tile or int(source.raw(i).shape[-1])
    x = tile_image(source, i, size).unsqueeze(0)
    path = result.path(c)
    learned = activation_maps(model, x, result.layers, path)
    original = activation_maps(model, x, result.layers, None)
    disp = (x[0] * source.std.view(3, 1, 1) + source.mean.view(3, 1, 1)).clamp(0, 1)
    return {"image": disp, "class": c, "index": i, "mask_rate": mask_rate,
            "path": {n: select_top(v, mask_rate)[0] for n, v in learned.items()},
            "original": {n: select_top(v, mask_rate)[0] for n, v in original.items()},
            "path_cam": {n: v[0] for n, v in learned.items()}, "original_cam": {n: v[0] for n, v in original.items()}}


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


def similarity_frame(result: PathResult) -> pd.DataFrame:
    names = [result.class_names[c] for c in result.classes]
    return pd.DataFrame(iou_matrix(result), index=pd.Index(names, name="class"), columns=names)


def top_similar(sim: np.ndarray, k: int = 3) -> np.ndarray:
    """For each row, the k most similar other rows (ties broken by lower index)."""
    K = sim.shape[0]
    out = np.zeros((K, min(k, K - 1)), np.int64)
    for i in range(K):
        others = [j for j in range(K) if j != i]
        order = sorted(others, key=lambda j: (-sim[i, j], j))
        out[i] = order[:out.shape[1]]
    return out


@torch.no_grad()
def class_probabilities(model: nn.Module, val_ds, batch_size: int = 256, device: str = "auto",
                        progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Softmax outputs (N, K) and labels on a validation set (the classifier's confusions)."""
    dev = _model_device(model)
    loader = torch.utils.data.DataLoader(val_ds, batch_size=batch_size, shuffle=False)
    probs, labels = [], []
    with frozen(model):
        for batch in tqdm(loader, desc="predict", disable=not progress, leave=False):
            probs.append(torch.softmax(model(batch[0].to(dev)).float(), 1).cpu())
            labels.append(torch.as_tensor(batch[1]))
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


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


def top3_table(result: PathResult, neighbours: dict, k: int = 3) -> pd.DataFrame:
    """Each class's top-k most similar sub-architectures beside the classifier's top-k predictions."""
    sim = iou_matrix(result)
    top = top_similar(sim, k)
    names = result.class_names
    rows = []
    for r, c in enumerate(result.classes):
        row = {"class": names[c]}
        for i in range(top.shape[1]):
            j = result.classes[top[r, i]]
            row[f"similar {i + 1}"] = f"{names[j]} ({sim[r, top[r, i]]:.2f})"
        for i, j in enumerate(neighbours[c]["top"][:k]):
            row[f"predicted {i + 1}"] = names[j]
        rows.append(row)
    return pd.DataFrame(rows).set_index("class")


def agreement(result: PathResult, neighbours: dict, k: int = 3) -> dict:
    """Our agreement score (not in the paper): how often the classifier's confusions fall among the k
    most similar sub-architectures. `mistaken_in_topk`: share of classes whose most-mistaken class is
    among its k most similar; `overlap_at_k`: mean |top-k wrong classes & top-k similar| / k."""
    top = top_similar(iou_matrix(result), k)
    hit, overlap = [], []
    for r, c in enumerate(result.classes):
        similar = {result.classes[j] for j in top[r]}
        hit.append(float(neighbours[c]["mistaken"] in similar))
        overlap.append(len(similar & set(neighbours[c]["wrong"][:k])) / max(1, top.shape[1]))
    return {"mistaken_in_topk": float(np.mean(hit)), "overlap_at_k": float(np.mean(overlap))}


def agreement_table(result: PathResult, neighbours: dict, k: int = 3, n_random: int = 20, seed: int = 0) -> pd.DataFrame:
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


# ============================================================================ notebook helpers
#: Search settings of the built-in default run (concept world, CPU): upstream's method with fewer,
#: larger steps so the three NAD notebooks finish in minutes; betas per concept-world model.
BUILTIN_BETA: dict[str, float] = {"small_vgg": 0.1, "small_resnet": 0.1}


def beta_for(model: str, dataset: str, beta: float | None) -> float:
    """`beta` when given, else upstream's default for (model, dataset), else the built-in one."""
    if beta is not None:
        return beta
    b = default_beta(model, dataset)
    if b is None:
        b = BUILTIN_BETA.get(model)
    if b is None:
        raise ParamError("beta", f"no default beta for model {model!r} on {dataset!r}; give beta explicitly")
    return b


def subset(result: PathResult, classes: Sequence[int]) -> PathResult:
    """The rows of `classes` only (a class's path does not depend on the other classes searched)."""
    rows = [result.row(c) for c in classes]
    pick = lambda d: {n: v[rows].clone() for n, v in d.items()}  # noqa: E731
    hist = result.history[result.history["class"].isin(list(classes))].reset_index(drop=True) \
        if result.history is not None else None
    return PathResult(result.layers, list(classes), result.class_names, pick(result.logits),
                      pick(result.final_logits), hist, dict(result.meta))


def sweep_betas(subject, cfg: SearchConfig, betas: Sequence[float], classes: Sequence[int] | None = None,
                reuse: PathResult | None = None, layers: Sequence[str] | str = "nad") -> pd.DataFrame:
    """Kept-channel fraction per layer (mean over `classes`) for each beta. Each search is cached; a
    beta equal to `reuse`'s takes its rows instead of searching again."""
    rows = []
    for b in betas:
        c = dataclasses.replace(cfg, beta=float(b), classes=list(classes) if classes is not None else cfg.classes)
        if reuse is not None and float(reuse.meta["config"]["beta"]) == float(b) and \
                set(c.classes or reuse.classes) <= set(reuse.classes):
            res = subset(reuse, c.classes or reuse.classes)
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


def hit_rate_study(subject, result: PathResult, n_mosaics: int = 100, mask_rate: float = 0.1, legacy: bool = False,
                   seed: int = 0, n_random: int = 1, progress: bool = True) -> pd.DataFrame:
    """2x2 hit rates per layer of the learned paths and of random-path controls (same per-layer keep
    counts), on `n_mosaics` mosaics of validation images. Long table: model, paths, layer, mosaic, hit."""
    mos = make_mosaics(subject.val_ds, n_mosaics, subject.input_size, seed, classes=result.classes)
    parts = [hit_rates(subject.model, result, mos, mask_rate, legacy, progress=progress).assign(paths="learned")]
    for i in range(n_random):
        ctrl = random_paths(result, seed=seed + 1000 + i)
        parts.append(hit_rates(subject.model, ctrl, mos, mask_rate, legacy, progress=progress)
                     .assign(paths="random (same keep fraction)"))
    out = pd.concat(parts, ignore_index=True)
    out.insert(0, "model", subject.model_name)
    return out


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


# ---------------------------------------------------------------------------- figures
def plot_keep_heatmap(result: PathResult, title: str | None = None):
    """Kept-channel fraction per layer (columns) and class (rows)."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    kf = result.keep_fraction()
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(kf.columns), 1.0 + 0.35 * len(kf)))
    sns.heatmap(kf, annot=len(kf) <= 20, fmt=".2f", cmap="viridis", vmin=0, vmax=1, ax=ax,
                cbar_kws={"label": "fraction of channels kept"}, annot_kws={"fontsize": 7})
    ax.set_xlabel("gated layer")
    ax.set_ylabel("class")
    ax.set_title(title or f"NAD paths: kept channels per layer (beta={result.meta['config']['beta']})")
    fig.tight_layout()
    return fig


def plot_loss_curves(result: PathResult):
    """Per-epoch mean losses (total, CE, MSE, regulariser) for each class."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    h = result.history.melt(id_vars=["epoch", "class_name"], value_vars=["loss", "ce", "mse", "reg"],
                            var_name="term", value_name="value")
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2), sharex=True)
    names = {"loss": "total loss", "ce": "cross-entropy (gated)", "mse": "sum of layer MSEs", "reg": "mean sigmoid(logit)^2"}
    for ax, term in zip(axes, names):
        sns.lineplot(data=h[h["term"] == term], x="epoch", y="value", hue="class_name", ax=ax,
                     legend=term == "reg", marker="o", markersize=3)
        ax.set_title(names[term])
        ax.set_xlabel("epoch")
        ax.set_ylabel(term)
    if axes[-1].get_legend() is not None:
        axes[-1].legend(title="class", fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle("NAD path search: loss curves per class (mean over the epoch's steps)")
    fig.tight_layout()
    return fig


def plot_beta_sweep(sweep: pd.DataFrame):
    """Kept-channel fraction versus beta, per layer and over all layers."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    fig, ax = plt.subplots(figsize=(7, 4))
    layers = sweep[sweep["layer"] != "all layers"]
    sns.lineplot(data=layers, x="beta", y="kept_fraction", hue="layer", marker="o", ax=ax, alpha=0.6)
    allx = sweep[sweep["layer"] == "all layers"]
    ax.plot(allx["beta"], allx["kept_fraction"], color="black", lw=2.5, marker="s", label="all layers")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("beta (weight of the path-size regulariser)")
    ax.set_ylabel("fraction of channels kept")
    ax.set_ylim(0, 1)
    ax.set_title("Path size versus beta")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def plot_hit_curves(summary: pd.DataFrame, chance: float = 0.25):
    """Hit rate per gated layer (mean with a std band over mosaics), one panel per model."""
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(summary["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.8), squeeze=False, sharey=True)
    colors = {"learned": "tab:blue"}
    for ax, model in zip(axes[0], models):
        sub = summary[summary["model"] == model]
        for paths, grp in sub.groupby("paths", sort=False):
            grp = grp.sort_values("layer_index")
            c = colors.get(paths, "tab:gray")
            ax.plot(grp["layer_index"], grp["mean"], marker="o", color=c, label=f"{paths} paths")
            ax.fill_between(grp["layer_index"], grp["mean"] - grp["std"], grp["mean"] + grp["std"], color=c, alpha=0.2)
        ax.axhline(chance, color="red", ls="--", lw=1, label=f"chance ({chance})")
        ax.set_xticks(sorted(sub["layer_index"].unique()))
        ax.set_xlabel("gated layer (1 = shallowest)")
        ax.set_ylabel("2x2 hit rate")
        ax.set_ylim(0, 1)
        ax.set_title(model)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Share of the top activation pixels inside the quadrant of the path's class (mean ± std over mosaics)")
    fig.tight_layout()
    return fig


def plot_single_maps(maps: dict, class_name: str, layers: Sequence[str]):
    """cam_1x1: the image, then per layer the top pixels with the class path (top row) and the original net (bottom)."""
    import matplotlib.pyplot as plt
    n = len(layers)
    fig, axes = plt.subplots(2, n + 1, figsize=(1.9 * (n + 1), 4.1), squeeze=False)
    img = maps["image"].permute(1, 2, 0).numpy()
    for row, key in enumerate(("path", "original")):
        axes[row, 0].imshow(img)
        axes[row, 0].set_title(("class path" if key == "path" else "original net"), fontsize=9)
        for j, layer in enumerate(layers, start=1):
            sel = maps[key][layer].numpy()
            cam = maps[f"{key}_cam"][layer].numpy()
            axes[row, j].imshow(img * 0.35)
            axes[row, j].imshow(cam, cmap="magma", alpha=0.45, vmin=0, vmax=1)
            axes[row, j].contour(sel > 0, levels=[0.5], colors="cyan", linewidths=0.8)
            axes[row, j].set_title(layer, fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Activation maps of one '{class_name}' image (cyan: top {maps['mask_rate']:.0%} pixels)")
    fig.tight_layout()
    return fig


def plot_mosaic_maps(subject, result: PathResult, mosaic_index: int = 0, n_mosaics: int = 100, seed: int = 0,
                     mask_rate: float = 0.1, layer: str | None = None):
    """One mosaic with each quadrant class's top pixels at one layer (the deepest by default)."""
    import matplotlib.pyplot as plt
    mos = make_mosaics(subject.val_ds, n_mosaics, subject.input_size, seed, classes=result.classes)
    layer = layer or result.layers[-1]
    x = mos.images[mosaic_index:mosaic_index + 1].repeat(4, 1, 1, 1)
    gates = {n: torch.stack([result.path(int(c))[n] for c in mos.classes[mosaic_index]]) for n in result.layers}
    cams = activation_maps(subject.model, x, [layer], gates)[layer]
    sel = select_top(cams, mask_rate)
    source = ImageSource(subject.val_ds)
    img = (x[0] * source.std.view(3, 1, 1) + source.mean.view(3, 1, 1)).clamp(0, 1).permute(1, 2, 0).numpy()
    fig, axes = plt.subplots(1, 5, figsize=(12, 2.8))
    axes[0].imshow(img)
    axes[0].set_title("mosaic", fontsize=9)
    for q in range(4):
        axes[q + 1].imshow(img * 0.35)
        axes[q + 1].imshow(cams[q].numpy(), cmap="magma", alpha=0.45)
        axes[q + 1].contour(sel[q].numpy() > 0, levels=[0.5], colors="cyan", linewidths=0.8)
        share = float(quadrant_shares(sel[q:q + 1])[0, q])
        axes[q + 1].set_title(f"{result.class_names[int(mos.classes[mosaic_index, q])]} ({QUADRANTS[q]}): "
                              f"hit {share:.2f}", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{subject.model_name}, layer {layer}: each quadrant class's path (cyan: top {mask_rate:.0%} pixels)")
    fig.tight_layout()
    return fig


def plot_similarity(result: PathResult):
    """Clustered heatmap of the layer-averaged IoU of the classes' paths."""
    import seaborn as sns
    sim = similarity_frame(result)
    g = sns.clustermap(sim, cmap="mako", vmin=0, vmax=1, annot=len(sim) <= 16, fmt=".2f", figsize=(7.5, 7),
                       annot_kws={"fontsize": 7}, cbar_kws={"label": "mean IoU over layers"}, method="average")
    g.ax_heatmap.set_xlabel("class")
    g.ax_heatmap.set_ylabel("class")
    g.fig.suptitle("Sub-architecture similarity (IoU of binary paths, averaged over layers; clustered)", y=1.02)
    return g.fig


def explorer_table(result: PathResult, neighbours: dict, k: int = 3) -> pd.DataFrame:
    """The explorer's static form: per class, kept channels per layer and its nearest classes."""
    sim = iou_matrix(result)
    top = top_similar(sim, k)
    kf = result.keep_fraction()
    out = kf.round(2).copy()
    out.columns = [f"kept {c}" for c in kf.columns]
    out["nearest sub-architectures"] = [", ".join(f"{result.class_names[result.classes[j]]} ({sim[r, j]:.2f})"
                                                  for j in top[r]) for r in range(len(result.classes))]
    out["most mistaken for"] = [result.class_names[neighbours[c]["mistaken"]] for c in result.classes]
    return out


def explorer(result: PathResult, neighbours: dict, k: int = 3):
    """An ipywidgets explorer: pick a class, see its path (kept channels per layer) and nearest classes.
    Returns None when ipywidgets is missing (the static `explorer_table` stands in)."""
    try:
        import ipywidgets as widgets
    except ImportError:
        return None
    import matplotlib.pyplot as plt
    table = explorer_table(result, neighbours, k)
    names = list(table.index)
    hard = result.hard()
    import io
    pick = widgets.Dropdown(options=names, description="class")
    picture = widgets.Image(format="png")
    info = widgets.HTML()

    def show(change=None):
        r = names.index(pick.value)
        fig, ax = plt.subplots(figsize=(8, 0.4 + 0.3 * len(result.layers)))
        width = max(v.shape[1] for v in hard.values())
        grid = np.full((len(result.layers), width), np.nan)
        for i, n in enumerate(result.layers):
            grid[i, :hard[n].shape[1]] = hard[n][r].float().numpy()
        ax.imshow(grid, aspect="auto", cmap="Greens", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(range(len(result.layers)), result.layers, fontsize=7)
        ax.set_xlabel("channel")
        ax.set_title(f"path of '{pick.value}' (green: kept channel)")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        picture.value = buf.getvalue()
        info.value = table.loc[[pick.value]].to_html()

    pick.observe(show, names="value")
    show()
    return widgets.VBox([pick, picture, info])


def subjects_and_paths(models_: Sequence[str], dataset: str, data_root, weights, scale: str, beta, lr: float,
                       epochs: int, path_epoch, batch_size: int, images_per_class, classes, seed: int,
                       device: str = "auto", progress: bool = True) -> tuple[dict, dict]:
    """For each model: its subject (`zoo.subject`) and its paths (cached search; the per-model beta
    default applies when `beta` is None). `weights` maps model -> checkpoint (or is one path for one model)."""
    from . import zoo
    require(isinstance(models_, (list, tuple)) and len(models_) > 0, "models", f"must be a non-empty list, got {models_!r}")
    if weights is None or isinstance(weights, (str, Path)):
        require(weights is None or len(models_) == 1, "weights", "give a {model: checkpoint} mapping for several models")
        weights = {m: weights for m in models_}
    require(isinstance(weights, Mapping), "weights", f"must be a {{model: checkpoint}} mapping, got {weights!r}")
    subjects, results = {}, {}
    for m in models_:
        S = zoo.subject(m, dataset, data_root, weights.get(m), scale, device, progress)
        cfg = SearchConfig(beta=beta_for(m, dataset, beta), lr=lr, epochs=epochs, path_epoch=path_epoch,
                           batch_size=batch_size, images_per_class=images_per_class, classes=classes, seed=seed,
                           device=device, progress=progress)
        subjects[m], results[m] = S, find_paths(S, cfg)
    return subjects, results


def models_overview(subjects: Mapping, results: Mapping) -> pd.DataFrame:
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


def compare_hit_rates(subjects: Mapping, results: Mapping, n_mosaics: int = 100, mask_rate: float = 0.1,
                      legacy: bool = False, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """`hit_rate_study` for every model on the same mosaics (same seed); one long table."""
    return pd.concat([hit_rate_study(S, results[m], n_mosaics, mask_rate, legacy, seed, progress=progress)
                      for m, S in subjects.items()], ignore_index=True)


def describe_hits(deep: pd.DataFrame, summary: pd.DataFrame) -> str:
    """A sentence with the deep-layer hit rates of learned versus random paths, per model."""
    parts = []
    for m, row in deep.iterrows():
        learned = row.get("learned", float("nan"))
        rand = row.get("random (same keep fraction)", float("nan"))
        best = summary[(summary["model"] == m) & (summary["paths"] == "learned")].sort_values("mean").iloc[-1]
        verdict = "above" if learned > max(0.25, rand) else "NOT above"
        parts.append(f"{m}: {learned:.3f} with learned paths vs {rand:.3f} with random paths ({verdict} both "
                     f"the random control and chance 0.25; best layer {best['layer']} {best['mean']:.3f})")
    n = int(summary["n_mosaics"].iloc[0])
    return (f"**2x2 hit rate of the two deepest gated layers** ({n} mosaics): " + "; ".join(parts) + ".")


def describe_agreement(agree: pd.DataFrame, k: int = 3) -> str:
    r = agree.loc["mistaken_in_topk"]
    o = agree.loc["overlap_at_k"]
    return (f"**Agreement score (ours):** the class each class is most often mistaken for is among its {k} most "
            f"similar sub-architectures for {r['learned paths']:.0%} of the classes (random paths "
            f"{r['random paths (mean)']:.0%} ± {r['random paths (std)']:.0%}, chance {r['chance']:.0%}); "
            f"overlap of the top-{k} wrong classes with the top-{k} similar: {o['learned paths']:.2f} "
            f"(random {o['random paths (mean)']:.2f}).")
