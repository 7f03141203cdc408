"""Dynamic-K activation (Sun, Ravi, Singh, ICCV 2019; upstream sunyiyou/dynamic-k-activation).

DKA replaces a classifier's final linear layer. For pooled features x (B x D) and weights W
(C x D) the *votes* are ``v[b, c, i] = x[b, i] * W[c, i]``; the logit of class c is the sum of the K
largest (signed) votes plus the bias, and the gradient flows only through the selected votes
(upstream ``RouteFcMaxAct``: ``(x[:, None] * W).topk(K, 2)[0].sum(2) + b``).

This module holds
- `TopKRouteLinear`: the routed head. Its forward pass builds the B x c x D votes for a chunk of c
  classes at a time (memory bounded by `max_votes`), its backward pass uses only the B x C x K
  selected indices (never the B x C x D vote tensor);
- `to_dka` / `build`: swap the head of any model (torchvision and CIFAR ResNets, the concept-world
  nets) and `load_checkpoint` for upstream checkpoints (``module.`` prefixes, ``rfc.*`` head keys);
- `train_model` / `k_sweep`: the dense baseline and DKA trained through `train.fit` with the same
  trunk initialisation, seed and recipe (upstream: SGD 0.1, momentum 0.9, weight decay 1e-4, lr / 10
  at every third of the epochs, a batch loss above 10 is a divergence), cached by configuration;
- `unit_contributions`, `concentration`, `explain`, `explain_page`: the upstream demo's
  per-image explanation (contribution of unit i to the true class = mean-pooled f_i * W[target, i])
  and how concentrated it is;
- `run`: the notebook's whole comparison (accuracy, dissection of both trunks with
  `netanatomy.dissect`, explanation concentration, K sweep).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import models
from .errors import DataError, ParamError, require
from .hooks import trace
from .runtime import atomic_save, atomic_write_json, cache_dir, cache_key, pick_device, resolve_path, seed_everything
from .world import fingerprint as world_fingerprint

#: The released DKA model's layer-4 dissection (ResNet-18, K = 5, Places365, Broden, NetDissect-Lite):
#: context for our numbers, not comparable to a small net on the concept world.
PUBLISHED = {"model": "ResNet-18 DKA K=5 (published, Places365)", "layer": "layer4", "units": 512,
             "interpretable": 441, "unique_concepts": 230, "scene_detectors": 307}

#: The upstream training recipe (train.py): SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 256,
#: 90 epochs, lr / 10 every 30 epochs; a batch loss above 10 is a divergence.
UPSTREAM_MAX_LOSS = 10.0


# ============================================================================ the routed layer
def _check_k(k, in_features: int, param: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ParamError(param, f"must be an integer between 1 and D = {in_features} (the head's input "
                                f"features), got {k!r}")
    if not 1 <= int(k) <= in_features:
        raise ParamError(param, f"must be between 1 and D = {in_features} (the head's input features), got {k}")
    return int(k)


def _chunk_size(batch: int, classes: int, features: int, chunk_classes: int | None, max_votes: int) -> int:
    if chunk_classes is not None:
        return max(1, min(int(chunk_classes), classes))
    return max(1, min(classes, max_votes // max(batch * features, 1)))


def route_indices(x: torch.Tensor, weight: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Indices (B, C, K) of the K largest votes x[b, i] * W[c, i] per (sample, class), chunked over classes."""
    out = []
    with torch.no_grad():
        for c0 in range(0, weight.shape[0], chunk):
            votes = x[:, None, :] * weight[None, c0:c0 + chunk, :]
            out.append(votes.topk(k, dim=2, sorted=False).indices)
    return torch.cat(out, 1)


class _TopKRoute(torch.autograd.Function):
    """Sum of the K largest votes; backward through the selected votes only (O(B C K) memory)."""

    @staticmethod
    def forward(ctx, x, weight, bias, k, chunk):
        dtype = torch.promote_types(x.dtype, weight.dtype)
        xs, ws = x.to(dtype), weight.to(dtype)
        idx = route_indices(xs, ws, k, chunk)                                  # (B, C, K)
        B, C, K = idx.shape
        rows = torch.arange(C, device=idx.device).view(1, C, 1)
        w_sel = ws[rows, idx]                                                   # (B, C, K)
        x_sel = xs.gather(1, idx.reshape(B, C * K)).view(B, C, K)
        out = (x_sel * w_sel).sum(2)
        if bias is not None:
            out = out + bias.to(dtype)
        ctx.save_for_backward(idx, x_sel, w_sel)
        ctx.meta = (x.shape, x.dtype, weight.shape, weight.dtype, bias is not None and bias.requires_grad,
                    None if bias is None else bias.dtype)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        idx, x_sel, w_sel = ctx.saved_tensors
        x_shape, x_dtype, w_shape, w_dtype, bias_grad, b_dtype = ctx.meta
        B, C, K = idx.shape
        g = grad.to(x_sel.dtype).unsqueeze(2)                                   # (B, C, 1)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.zeros(x_shape, dtype=x_sel.dtype, device=grad.device)
            grad_x.scatter_add_(1, idx.reshape(B, C * K), (g * w_sel).reshape(B, C * K))
            grad_x = grad_x.to(x_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros(w_shape, dtype=x_sel.dtype, device=grad.device)
            grad_w.scatter_add_(1, idx.permute(1, 0, 2).reshape(C, B * K),
                                (g * x_sel).permute(1, 0, 2).reshape(C, B * K))
            grad_w = grad_w.to(w_dtype)
        if bias_grad:
            grad_b = grad.sum(0).to(b_dtype)
        return grad_x, grad_w, grad_b, None, None


class TopKRouteLinear(nn.Module):
    """DKA head: logit[b, c] = sum of the K largest votes x[b, i] * W[c, i] over i, plus bias[c].

    Same parameters (`weight` C x D, `bias` C) and initialisation as `nn.Linear`, so a dense head's
    weights copy over unchanged, and with K = D it computes exactly what `nn.Linear` computes.
    The vote tensor is built for `chunk_classes` classes at a time (default: as many as fit in
    `max_votes` elements), and the backward pass keeps only the B x C x K selected votes.
    Marked `is_head` so `models.head` / `models.set_head` find it.
    """

    is_head = True

    def __init__(self, in_features: int, out_features: int, k: int, bias: bool = True,
                 chunk_classes: int | None = None, max_votes: int = 1 << 22):
        super().__init__()
        require(isinstance(in_features, int) and in_features >= 1, "in_features", f"must be >= 1, got {in_features!r}")
        require(isinstance(out_features, int) and out_features >= 1, "out_features", f"must be >= 1, got {out_features!r}")
        self.in_features, self.out_features = in_features, out_features
        self.k = _check_k(k, in_features)
        require(chunk_classes is None or (isinstance(chunk_classes, int) and chunk_classes >= 1), "chunk_classes",
                f"must be None or an integer >= 1, got {chunk_classes!r}")
        require(isinstance(max_votes, int) and max_votes >= 1, "max_votes", f"must be an integer >= 1, got {max_votes!r}")
        self.chunk_classes, self.max_votes = chunk_classes, max_votes
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation (upstream RouteFcMaxAct subclasses nn.Linear)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, k: int, **kwargs) -> "TopKRouteLinear":
        """A routed head with the weights (copied) of a dense `linear`."""
        layer = cls(linear.in_features, linear.out_features, k, bias=linear.bias is not None, **kwargs)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer.to(device=linear.weight.device, dtype=linear.weight.dtype)

    def chunk(self, batch: int) -> int:
        """Classes per chunk for a batch of `batch` samples."""
        return _chunk_size(batch, self.out_features, self.in_features, self.chunk_classes, self.max_votes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ParamError("x", f"TopKRouteLinear expects (B, {self.in_features}) features, got {tuple(x.shape)}")
        return _TopKRoute.apply(x, self.weight, self.bias, self.k, self.chunk(x.shape[0]))

    def votes(self, x: torch.Tensor) -> torch.Tensor:
        """All votes (B, C, D) = x[b, i] * W[c, i] (small inputs only: no chunking)."""
        return x[:, None, :] * self.weight[None]

    @torch.no_grad()
    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, indices), each (B, C, K): the selected votes per (sample, class), largest first."""
        idx = route_indices(x, self.weight, self.k, self.chunk(x.shape[0]))
        B, C, K = idx.shape
        rows = torch.arange(C, device=idx.device).view(1, C, 1)
        vals = x.gather(1, idx.reshape(B, C * K)).view(B, C, K) * self.weight[rows, idx]
        vals, order = vals.sort(2, descending=True)
        return vals, idx.gather(2, order)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, k={self.k}, " \
               f"bias={self.bias is not None}"


def reference_topk_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int) -> torch.Tensor:
    """The upstream formula with plain autograd (B x C x D votes kept for backward): for tests and benchmarks."""
    out = (x[:, None, :] * weight).topk(k, 2)[0].sum(2)
    return out + bias if bias is not None else out


# ============================================================================ model surgery and checkpoints
def head_k(model: nn.Module) -> int | None:
    """K of the model's routed head, or None for a dense head."""
    _, module = models.head(model)
    return getattr(module, "k", None) if isinstance(module, TopKRouteLinear) else None


def to_dka(model: nn.Module, k: int, chunk_classes: int | None = None, max_votes: int = 1 << 22) -> nn.Module:
    """Replace the model's final linear layer (found by `models.head`) by a `TopKRouteLinear` with its weights."""
    name, module = models.head(model)
    if isinstance(module, TopKRouteLinear):
        module.k = _check_k(k, module.in_features)
        return model
    if not isinstance(module, nn.Linear):
        raise ParamError("model", f"head {name!r} is a {type(module).__name__}, not a linear layer")
    models.set_head(model, TopKRouteLinear.from_linear(module, _check_k(k, module.in_features),
                                                       chunk_classes=chunk_classes, max_votes=max_votes))
    return model


def build(name: str, num_classes: int, k: int | None = None, width_mult: float = 1.0,
          weights: str | Path | None = None, **kwargs) -> nn.Module:
    """`models.build(name, num_classes)` with its head routed by K (None: the dense model); `weights`
    is loaded with `load_checkpoint` (upstream ``rfc.*`` / ``module.`` keys accepted)."""
    model = models.build(name, num_classes, width_mult=width_mult, **kwargs)
    if k is not None:
        to_dka(model, k)
    if weights is not None:
        load_checkpoint(model, weights)
    return model


UPSTREAM_HEAD_PREFIX = "rfc."


def k_from_mark(mark: str) -> int:
    """K of an upstream run mark or file name: 't5' or 'resnet18_fc_ma_t5.pth' -> 5."""
    m = re.search(r"(?:^|_)t(\d+)(?:\.|$)", str(mark)) or re.fullmatch(r"t(\d+)", str(mark))
    if not m:
        raise ParamError("mark", f"{mark!r} holds no upstream K mark like 't5'")
    return int(m.group(1))


def load_checkpoint(model: nn.Module, source, trusted: bool = False) -> nn.Module:
    """Load a dense or DKA checkpoint: ours, or upstream (``{'state_dict': {'module.rfc.weight': ...}}``).

    ``module.`` prefixes are stripped and the upstream head ``rfc.*`` is renamed to the model's head.
    A DKA checkpoint (``rfc.*`` keys) into a model with a dense head is refused (route it with K first),
    and any other mismatch raises DataError listing missing and unexpected keys (`models.load_weights`).
    """
    where = str(source) if isinstance(source, (str, Path)) else "state dict"
    obj = models.read_checkpoint(source, trusted) if isinstance(source, (str, Path)) else source
    state = models.extract_state_dict(obj)
    keys = [k[len("module."):] if k.startswith("module.") else k for k in state]
    head_name, head = models.head(model)
    if any(k.startswith(UPSTREAM_HEAD_PREFIX) for k in keys) and not isinstance(head, TopKRouteLinear) \
            and head_name + "." != UPSTREAM_HEAD_PREFIX:
        raise DataError(where, "is an upstream DKA checkpoint (rfc.* head) but the model's head is dense; "
                               "build the model with k (e.g. k=5 for the released 't5' model)",
                        "a model built with dka.build(name, num_classes, k=K)")
    rename = {UPSTREAM_HEAD_PREFIX: head_name + "."} if head_name + "." != UPSTREAM_HEAD_PREFIX else None
    return models.load_weights(model, dict(state), rename=rename)


# ============================================================================ training (dense vs DKA)
@dataclasses.dataclass(frozen=True)
class Setup:
    """What is trained: architecture, data and the shared recipe (dense and DKA differ only in K)."""

    model: str = "small_vgg"
    dataset: str = "concept_world"
    data_root: str | None = None
    world: object = None                 # world.WorldConfig for the concept world
    width_mult: float = 1.0
    epochs: int = 10
    lr: float = 0.1
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_loss: float = UPSTREAM_MAX_LOSS
    image_size: int | None = None
    seed: int = 0

    def recipe(self, device: str = "auto", progress: bool = True, epochs: int | None = None):
        """The shared TrainConfig: SGD, step schedule dividing lr by 10 at every third of the epochs."""
        from .train import TrainConfig
        epochs = self.epochs if epochs is None else epochs
        return TrainConfig(epochs=epochs, batch_size=self.batch_size, lr=self.lr, optimizer="sgd",
                           momentum=self.momentum, weight_decay=self.weight_decay, schedule="step",
                           step_size=max(1, epochs // 3), gamma=0.1, seed=self.seed, device=device,
                           max_loss=self.max_loss, progress=progress)


def datasets(setup: Setup, progress: bool = True):
    """(train with augmentation, val) datasets of a setup."""
    from . import data
    kw = {"world": setup.world} if setup.dataset == "concept_world" else {}
    if setup.image_size is not None:
        kw["image_size"] = setup.image_size
    train = data.get_dataset(setup.dataset, setup.data_root, split="train", train_aug=True, progress=progress, **kw)
    val = data.get_dataset(setup.dataset, setup.data_root, split="val", train_aug=False, progress=progress, **kw)
    return train, val


@dataclasses.dataclass
class Trained:
    """A trained (or loaded) model with its K (None: dense), history, accuracy and status."""

    k: int | None
    model: nn.Module | None
    history: pd.DataFrame
    val_acc: float
    status: str = "ok"            # ok | diverged | loaded
    path: Path | None = None
    message: str = ""

    @property
    def label(self) -> str:
        return "dense" if self.k is None else f"DKA K={self.k}"


def _setup_key(setup: Setup, epochs: int, k: int | None, num_classes: int) -> str:
    fields = dataclasses.asdict(setup) if setup.world is None else {
        **{f.name: getattr(setup, f.name) for f in dataclasses.fields(setup) if f.name != "world"},
        "world": world_fingerprint(setup.world)}
    fields["epochs"] = epochs
    return cache_key(version=1, setup=fields, k=k, num_classes=num_classes)


def train_model(setup: Setup, k: int | None, epochs: int | None = None, device: str = "auto",
                progress: bool = True, train_ds=None, val_ds=None) -> Trained:
    """Train model `setup.model` with a dense head (k=None) or a DKA head (K = k) through `train.fit`.

    The trunk and head start from the same seeded initialisation for every k (the DKA head copies
    the dense head's initial weights), and data order is the recipe's seed: dense and DKA differ only
    in the head's routing. Cached under ``cache_dir('dka')`` by configuration; an interrupted run
    resumes from its epoch checkpoint; a divergence (batch loss > `max_loss`) is recorded (status
    'diverged') and cached too.
    """
    from .train import TrainingDiverged, fit

    epochs = setup.epochs if epochs is None else epochs
    if train_ds is None or val_ds is None:
        train_ds, val_ds = datasets(setup, progress)
    num_classes = len(val_ds.classes)
    seed_everything(setup.seed)
    model = models.build(setup.model, num_classes, width_mult=setup.width_mult)
    if k is not None:
        to_dka(model, k)
    key = _setup_key(setup, epochs, k, num_classes)
    folder = cache_dir("dka", f"{setup.model}-{'dense' if k is None else f'k{k}'}-{key}")
    final, failed = folder / "model.pt", folder / "diverged.json"
    if failed.exists():
        info = json.loads(failed.read_text())
        return Trained(k, None, pd.DataFrame(info["history"]), float("nan"), "diverged", folder, info["message"])
    if final.exists():
        saved = torch.load(final, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        history = pd.DataFrame(saved["history"])
    else:
        try:
            history = fit(model, train_ds, val_ds, setup.recipe(device, progress, epochs), out_dir=folder)
        except TrainingDiverged as exc:
            ckpt = folder / "checkpoint.pt"
            hist = torch.load(ckpt, map_location="cpu", weights_only=False)["history"] if ckpt.exists() else []
            atomic_write_json(failed, {"message": str(exc), "history": hist})
            ckpt.unlink(missing_ok=True)
            return Trained(k, None, pd.DataFrame(hist), float("nan"), "diverged", folder, str(exc))
        model.cpu()
        atomic_save({"model": model.state_dict(), "history": history.to_dict("records"), "k": k}, final)
        (folder / "checkpoint.pt").unlink(missing_ok=True)
    model.eval().to(pick_device(device))
    val_acc = float(history["val_acc"].iloc[-1]) if len(history) and "val_acc" in history else float("nan")
    return Trained(k, model, history, val_acc, "ok", final)


def load_trained(setup: Setup, k: int | None, weights, val_ds, device: str = "auto",
                 progress: bool = True) -> Trained:
    """A model loaded from a checkpoint (ours or upstream) and evaluated on `val_ds`."""
    from .train import evaluate
    model = build(setup.model, len(val_ds.classes), k=k, width_mult=setup.width_mult, weights=weights)
    metrics = evaluate(model, val_ds, batch_size=setup.batch_size, device=device, progress=progress)
    return Trained(k, model.eval(), pd.DataFrame([{"epoch": 0, "val_acc": metrics["acc"], "val_loss": metrics["loss"]}]),
                   metrics["acc"], "loaded", Path(weights))


# ============================================================================ explanations
def _check_layer_feeds_head(model: nn.Module, layer: str, maps: torch.Tensor, logits: torch.Tensor) -> None:
    _, head = models.head(model)
    feats = maps.float().mean((2, 3))
    if feats.shape[1] != head.in_features or not torch.allclose(head(feats), logits.float(), rtol=1e-3, atol=1e-3):
        raise ParamError("layer", f"the head's input is not the global average pool of layer {layer!r}; "
                                  f"give the last convolutional stage (e.g. models.layers(name, 'last'))")


@torch.no_grad()
def unit_contributions(model: nn.Module, layer: str, dataset, batch_size: int = 256, device: str = "auto",
                       progress: bool = True, indices: Sequence[int] | None = None,
                       keep_maps: bool = False) -> dict:
    """Per image: contribution of every unit to the true class, c[b, i] = mean-pooled f_i * W[target, i].

    Returns dict(contrib (N, D), target (N,), pred (N,), logit (N,) of the true class, and with
    `keep_maps` the maps (N, D, h, w)). `layer` must be the stage whose global average pool feeds
    the head (checked on the first batch).
    """
    dev = pick_device(device)
    model.eval().to(dev)
    _, head = models.head(model)
    idx = list(range(len(dataset))) if indices is None else list(indices)
    out = {"contrib": [], "target": [], "pred": [], "logit": [], "maps": []}
    checked = False
    for s in tqdm(range(0, len(idx), batch_size), desc="contributions", disable=not progress, leave=False):
        items = [dataset[i] for i in idx[s:s + batch_size]]
        x = torch.stack([it[0] for it in items]).to(dev)
        y = torch.tensor([int(it[1]) for it in items], device=dev)
        with trace(model, [layer], detach=True) as t:
            logits = model(x)
        maps = t[layer].float()
        if not checked:
            _check_layer_feeds_head(model, layer, maps, logits)
            checked = True
        w = head.weight[y].float()
        out["contrib"].append((maps.mean((2, 3)) * w).cpu())
        out["target"].append(y.cpu())
        out["pred"].append(logits.argmax(1).cpu())
        out["logit"].append(logits.float().gather(1, y[:, None])[:, 0].cpu())
        if keep_maps:
            out["maps"].append(maps.cpu())
    res = {k: torch.cat(v) for k, v in out.items() if v}
    return res


def concentration(contrib: torch.Tensor, k: int) -> torch.Tensor:
    """Per image: share of the true-class explanation carried by its top-k units,
    sum of the k largest contributions / sum of |contributions| (the upstream demo's percentages)."""
    total = contrib.abs().sum(1).clamp_min(1e-12)
    return contrib.topk(min(k, contrib.shape[1]), 1).values.sum(1) / total


def concentration_curve(contrib: torch.Tensor, max_units: int = 20) -> pd.DataFrame:
    """Mean share of the explanation carried by the top-n units, n = 1..max_units."""
    total = contrib.abs().sum(1, keepdim=True).clamp_min(1e-12)
    top = contrib.topk(min(max_units, contrib.shape[1]), 1).values.cumsum(1) / total
    return pd.DataFrame({"units": np.arange(1, top.shape[1] + 1), "share": top.mean(0).numpy()})


def unit_labels(dissection) -> pd.DataFrame:
    """(unit 0-based) -> label, category, iou from a LayerDissection's tally (1-based units)."""
    tally = dissection.tally
    df = pd.DataFrame({"unit": tally["unit"].astype(int) - 1, "label": tally["label"].astype(str),
                       "category": tally["category"].astype(str), "iou": tally["score"].astype(float)})
    return df.set_index("unit").sort_index()


def _png_data_uri(arr: np.ndarray) -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _overlay(image: np.ndarray, amap: np.ndarray, strength: float) -> np.ndarray:
    """Upstream-style class-activation overlay: jet map of the unit (min-max scaled), blended by strength."""
    import matplotlib
    h, w = image.shape[:2]
    t = torch.from_numpy(amap.astype(np.float32))[None, None]
    up = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    up = (up - up.min()) / max(float(up.max() - up.min()), 1e-8)
    jet = matplotlib.colormaps["jet"](up)[..., :3] * 255
    out = 0.5 * image.astype(np.float32) + 0.45 * max(strength, 0.0) * jet
    return np.clip(out, 0, 255).astype(np.uint8)


def _raw_image(dataset, index: int) -> np.ndarray:
    """The dataset's image `index` as uint8 HxWx3 (concept world arrays, or an ImageFolder file)."""
    if hasattr(dataset, "images"):
        return np.asarray(dataset.images[index])
    if hasattr(dataset, "samples"):
        from PIL import Image
        return np.asarray(Image.open(dataset.samples[index][0]).convert("RGB"))
    x = dataset[index][0]
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-8)
    return (x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def explain(model: nn.Module, layer: str, dataset, indices: Sequence[int], labels: pd.DataFrame | None = None,
            top: int = 5, device: str = "auto", upscale: int = 96) -> list[dict]:
    """The upstream demo: per image, the `top` units by contribution to the true class, each with its
    share of the explanation (contribution / sum |contributions|, in %), dissection label and IoU,
    and a class-activation overlay of its map (as a PNG data URI)."""
    res = unit_contributions(model, layer, dataset, device=device, progress=False, indices=indices, keep_maps=True)
    classes = list(getattr(dataset, "classes", []))
    out = []
    for j, i in enumerate(indices):
        c = res["contrib"][j]
        share = c / c.abs().sum().clamp_min(1e-12) * 100
        units = c.argsort(descending=True)[:top].tolist()
        img = _raw_image(dataset, i)
        if img.shape[0] < upscale:
            from PIL import Image
            img = np.asarray(Image.fromarray(img).resize((upscale, upscale), Image.NEAREST))
        scale = float(share[units].max()) or 1.0
        entries = []
        for u in units:
            lab = labels.loc[u] if labels is not None and u in labels.index else None
            entries.append({"unit": u + 1, "share": float(share[u]), "contribution": float(c[u]),
                            "label": None if lab is None else str(lab["label"]),
                            "category": None if lab is None else str(lab["category"]),
                            "iou": None if lab is None else float(lab["iou"]),
                            "overlay": _png_data_uri(_overlay(img, res["maps"][j, u].numpy(), float(share[u]) / scale))})
        t, p = int(res["target"][j]), int(res["pred"][j])
        out.append({"index": int(i), "target": classes[t] if classes else t, "predicted": classes[p] if classes else p,
                    "logit": float(res["logit"][j]), "top_share": float(share[units].sum()),
                    "image": _png_data_uri(img), "units": entries})
    return out


def explain_page(explanations: list[dict], title: str, iou_threshold: float = 0.04) -> str:
    """An HTML page like upstream explain.html: per image '100% = a% + b% + ...', the units, their
    labels (IoU) and overlays. Labels below `iou_threshold` are greyed."""
    from .report import html_page
    css = ("<style>.img{display:inline-block;margin:6px;padding:6px;box-shadow:0 3px 8px #aaa}"
           ".cell{display:inline-block;width:110px;vertical-align:top;font-size:12px;text-align:center}"
           ".cell img{width:104px;image-rendering:pixelated}.low{color:#aaa}</style>")
    parts = [css, "<p>Contribution of unit i to the true class = mean-pooled f<sub>i</sub> &times; "
                  "W[target, i]; shares are contributions / sum |contributions| (as upstream demo.py). "
                  "Overlays: the unit's map, jet colour scale, strength proportional to its share.</p>"]
    for e in explanations:
        ok = "ok" if e["target"] == e["predicted"] else "fail"
        head = " + ".join(f"{u['share']:.1f}%" for u in e["units"])
        cells = [f"<div class='cell'><img src='{e['image']}'><br>image val-{e['index']}<br>"
                 f"true <b>{html.escape(str(e['target']))}</b><br>"
                 f"<span class='{ok}'>pred {html.escape(str(e['predicted']))}</span></div>"]
        for u in e["units"]:
            low = u["iou"] is None or u["iou"] < iou_threshold
            lab = "(no dissection)" if u["label"] is None else f"{html.escape(u['label'])} ({u['iou']:.2f})"
            cells.append(f"<div class='cell'><img src='{u['overlay']}'><br>unit {u['unit']}: {u['share']:.1f}%"
                         f"<br><span class='{'low' if low else ''}'>{lab}</span></div>")
        parts.append(f"<div class='img'><div><b>100% &asymp; {head}"
                     f" + rest</b> (top units carry {e['top_share']:.1f}%)</div>{''.join(cells)}</div>")
    return html_page(title, "".join(parts))


# ============================================================================ the notebook's experiment
#: Concept worlds of the DKA notebook per scale: 32 px images (about 5x faster to train on CPU than 64 px).
def world_for(scale: str):
    """The concept world a scale trains and dissects on ('default': 32 px, 6,000 + 1,500 images;
    'smoke': the zoo's smoke world, 32 px, 600 + 200)."""
    from . import zoo
    from .world import WorldConfig
    if scale == "default":
        return WorldConfig(image_size=32)
    return zoo.world_for(scale)


def feature_dim(model: str, width_mult: float = 1.0) -> int:
    """D, the number of features entering the head of architecture `model`."""
    return models.head(models.build(model, 2, width_mult=width_mult))[1].in_features


DENSE_NAMES = ("D", "dense")


@dataclasses.dataclass
class Config:
    """The DKA notebook's parameters, checked. Each is described in the README, "Dynamic-K activation"."""

    model: str = "small_vgg"
    dataset: str = "concept_world"
    data_root: str | None = None
    weights: str | None = None
    dense_weights: str | None = None
    k: int = 5
    k_sweep: Sequence = (1, 2, 5, 10, "D")
    epochs: int = 10
    sweep_epochs: int | None = None
    lr: float = 0.1
    batch_size: int = 128
    broden_root: str | None = None
    layer: str | None = None
    categories: Sequence[str] | None = None
    quantile: float = 0.005
    iou_threshold: float = 0.04
    union_rule: str = "lite"
    explain_images: int = 6
    image_size: int | None = None
    scale: str = "default"
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.model not in models.MODEL_NAMES:
            raise ParamError("model", f"unknown model {self.model!r}; choose one of {', '.join(models.MODEL_NAMES)}")
        require(self.scale in ("default", "smoke"), "scale", f"must be 'default' or 'smoke', got {self.scale!r}")
        self.D = feature_dim(self.model)
        self.k = _check_k(self.k, self.D)
        sweep = [] if self.k_sweep is None else list(self.k_sweep)
        self.k_sweep = [None if (isinstance(s, str) and s in DENSE_NAMES) or s == self.D else
                        _check_k(s, self.D, "k_sweep") for s in sweep]
        require(isinstance(self.epochs, int) and self.epochs >= 0, "epochs", f"must be an integer >= 0, got {self.epochs!r}")
        require(self.sweep_epochs is None or (isinstance(self.sweep_epochs, int) and self.sweep_epochs >= 1),
                "sweep_epochs", f"must be None (= epochs) or an integer >= 1, got {self.sweep_epochs!r}")
        if self.epochs == 0:
            require(self.weights is not None and self.dense_weights is not None, "epochs",
                    "is 0 (no training): give both weights (the DKA checkpoint) and dense_weights")
            require(not self.k_sweep or self.sweep_epochs, "sweep_epochs",
                    "must be given (>= 1) for a K sweep when epochs is 0")
        require(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        require(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size",
                f"must be an integer >= 1, got {self.batch_size!r}")
        require(0 < self.quantile < 1, "quantile", f"must be in (0, 1), got {self.quantile}")
        require(0 <= self.iou_threshold <= 1, "iou_threshold", f"must be in [0, 1], got {self.iou_threshold}")
        require(self.union_rule in ("image", "lite"), "union_rule", f"must be 'image' or 'lite', got {self.union_rule!r}")
        require(isinstance(self.explain_images, int) and self.explain_images >= 0, "explain_images",
                f"must be an integer >= 0, got {self.explain_images!r}")
        for name in ("weights", "dense_weights"):
            path = getattr(self, name)
            if path is not None and not resolve_path(path).is_file():
                raise DataError(path, f"checkpoint given as {name} not found", "a .pth/.pt file saved with torch.save")
        if self.broden_root is not None:
            root = resolve_path(self.broden_root)
            if not root.is_dir() or not (root / "index.csv").is_file():
                raise DataError(root, "is not a Broden folder (parameter broden_root)",
                                "a folder holding index.csv, label.csv, category.csv and images/ "
                                "(e.g. broden1_224), or None for the exported concept world")
        elif self.dataset != "concept_world":
            raise ParamError("broden_root", f"is required for dataset {self.dataset!r}: point it at broden1_224")
        if self.layer is None:
            self.layer = models.layers(self.model, "last")[0]

    @classmethod
    def from_params(cls, params: dict) -> "Config":
        """A Config from a notebook's collected parameters (unknown names are refused)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [n for n in params if n not in names]
        if unknown:
            raise ParamError(unknown[0], f"is not a DKA parameter; known: {', '.join(sorted(names))}")
        return cls(**params)

    @property
    def world(self):
        return world_for(self.scale) if self.dataset == "concept_world" else None

    @property
    def input_size(self) -> int:
        if self.image_size is not None:
            return self.image_size
        return self.world.image_size if self.dataset == "concept_world" else 224

    def setup(self) -> Setup:
        return Setup(model=self.model, dataset=self.dataset, data_root=self.data_root, world=self.world,
                     epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, image_size=self.image_size,
                     seed=self.seed)

    def broden(self) -> Path:
        """The Broden folder to dissect on: `broden_root`, or this scale's concept world exported as Broden."""
        if self.broden_root is not None:
            return Path(self.broden_root)
        from . import broden
        cfg = self.world
        key = cache_key(world=world_fingerprint(cfg), split="val")
        return broden.export_world(cfg, cache_dir("dka", "broden") / f"world-val-{cfg.image_size}px-{key}",
                                   split="val", progress=self.progress)


@dataclasses.dataclass
class Pair:
    """The dense baseline and the DKA model (same trunk, seed and recipe), with their data."""

    dense: Trained
    dka: Trained
    train_ds: object
    val_ds: object

    def table(self) -> pd.DataFrame:
        rows = []
        for t in (self.dense, self.dka):
            last = t.history.iloc[-1] if len(t.history) else {}
            k = t.k if t.k is not None else models.head(t.model)[1].in_features
            rows.append({"model": t.label, "k": k, "status": t.status, "epochs": int(last.get("epoch", 0)),
                         "train_acc": float(last.get("train_acc", float("nan"))), "val_acc": t.val_acc})
        df = pd.DataFrame(rows)
        df["val_acc_minus_dense"] = df["val_acc"] - self.dense.val_acc
        return df


def train_pair(cfg: Config) -> Pair:
    """Train (or load from `weights`/`dense_weights`) the dense baseline and the DKA model.

    A divergence of either main run stops with a clear TrainingDiverged message."""
    from .train import TrainingDiverged
    setup = cfg.setup()
    train_ds, val_ds = datasets(setup, cfg.progress)
    out = {}
    for name, k, weights in (("dense", None, cfg.dense_weights), ("dka", cfg.k, cfg.weights)):
        if weights is not None:
            out[name] = load_trained(setup, k, weights, val_ds, cfg.device, cfg.progress)
        else:
            out[name] = train_model(setup, k, device=cfg.device, progress=cfg.progress, train_ds=train_ds, val_ds=val_ds)
            if out[name].status == "diverged":
                raise TrainingDiverged(f"{out[name].label}: {out[name].message} (upstream treats a batch loss "
                                       f"above {setup.max_loss:g} as a divergence; lower lr)")
    return Pair(out["dense"], out["dka"], train_ds, val_ds)


def dissect_config(cfg: Config):
    from . import dissect
    return dissect.DissectConfig(quantile=cfg.quantile, iou_threshold=cfg.iou_threshold, categories=cfg.categories,
                                 union_rule=cfg.union_rule, batch_size=max(cfg.batch_size, 64), device=cfg.device,
                                 progress=cfg.progress)


def dissect_model(cfg: Config, model: nn.Module, broden_root: Path | None = None):
    """Network Dissection (`netanatomy.dissect`) of `cfg.layer` of `model`: its LayerDissection."""
    from . import dissect
    root = broden_root or cfg.broden()
    return dissect.dissect(model, [cfg.layer], root, dissect_config(cfg), input_size=cfg.input_size)[cfg.layer]


def dissect_pair(cfg: Config, pair: Pair, broden_root: Path | None = None) -> dict:
    """{model label: LayerDissection of `cfg.layer`} for the dense and the DKA trunk."""
    root = broden_root or cfg.broden()
    return {t.label: dissect_model(cfg, t.model, root) for t in (pair.dense, pair.dka)}


def write_dissection_reports(dissections: dict, out_dir: Path, broden_root: Path, max_units: int | None = 40,
                             progress: bool = True) -> pd.DataFrame:
    """Each trunk's Network Dissection HTML report (`dissect.write_report`) under out_dir/dissection_<model>/."""
    from . import dissect
    rows = []
    for label, res in dissections.items():
        slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
        path = dissect.write_report({f"{label}: {res.layer}": res}, Path(out_dir) / f"dissection_{slug}", broden_root,
                                    title=f"Network Dissection: {label}", max_units=max_units, progress=progress)
        rows.append({"model": label, "report": str(path)})
    return pd.DataFrame(rows)


def _summary_row(name: str, summary: dict) -> dict:
    row = {"model": name, "units": summary["units"], "interpretable": summary["interpretable"],
           "unique_concepts": summary["unique_concepts"]}
    row["interpretable_share"] = row["interpretable"] / max(row["units"], 1)
    for cat, n in (summary.get("per_category") or {}).items():
        row[f"{cat}_detectors"] = n
    return row


def dissection_table(dissections: dict, with_published: bool = True) -> pd.DataFrame:
    """Both trunks' dissection counts side by side, plus the published ResNet-18 numbers (labelled as context)."""
    rows = [_summary_row(name, d.summary()) for name, d in dissections.items()]
    df = pd.DataFrame(rows).fillna(0)
    df["source"] = "this run"
    if with_published:
        p = PUBLISHED
        df = pd.concat([df, pd.DataFrame([{"model": p["model"], "units": p["units"], "interpretable": p["interpretable"],
                                           "unique_concepts": p["unique_concepts"],
                                           "interpretable_share": p["interpretable"] / p["units"],
                                           "scene_detectors": p["scene_detectors"],
                                           "source": "published (Sun et al. 2019), context only"}])],
                       ignore_index=True)
    cols = ["model", "source", "units", "interpretable", "interpretable_share", "unique_concepts"]
    return df[cols + [c for c in df.columns if c not in cols]]


def detectors_frame(dissections: dict, iou_threshold: float) -> pd.DataFrame:
    """Long table: model, category, detectors (units with IoU >= threshold, by their best category)."""
    rows = []
    for name, d in dissections.items():
        t = d.tally
        good = t[t["score"] >= iou_threshold]
        for cat, n in good["category"].value_counts().items():
            rows.append({"model": name, "category": cat, "detectors": int(n),
                         "unique_concepts": int(good[good["category"] == cat]["label"].nunique())})
    return pd.DataFrame(rows, columns=["model", "category", "detectors", "unique_concepts"])


@dataclasses.dataclass
class Concentration:
    """Explanation concentration of both models on the validation set."""

    table: pd.DataFrame          # model, k, mean/median share of the top-k units, accuracy
    curves: pd.DataFrame         # model, units, share
    per_image: pd.DataFrame      # model, share


def concentration_stats(cfg: Config, pair: Pair) -> Concentration:
    """Share of the true-class explanation carried by the top-K units (K = cfg.k), DKA versus dense."""
    rows, curves, per = [], [], []
    for t in (pair.dense, pair.dka):
        res = unit_contributions(t.model, cfg.layer, pair.val_ds, batch_size=cfg.batch_size, device=cfg.device,
                                 progress=cfg.progress)
        share = concentration(res["contrib"], cfg.k)
        rows.append({"model": t.label, "top_k": cfg.k, "mean_share": float(share.mean()),
                     "median_share": float(share.median()),
                     "units_for_half": float((concentration_curve(res["contrib"], res["contrib"].shape[1])["share"]
                                              < 0.5).sum() + 1),
                     "val_acc": float((res["pred"] == res["target"]).float().mean())})
        c = concentration_curve(res["contrib"], 20)
        c.insert(0, "model", t.label)
        curves.append(c)
        per.append(pd.DataFrame({"model": t.label, "share": share.numpy()}))
    return Concentration(pd.DataFrame(rows), pd.concat(curves, ignore_index=True), pd.concat(per, ignore_index=True))


def k_sweep(cfg: Config, broden_root: Path | None = None, pair: Pair | None = None) -> pd.DataFrame:
    """Train one model per K in `cfg.k_sweep` (None / 'D': the dense head, K = D) for `sweep_epochs`
    epochs, dissect each trunk and measure its concentration; a diverged run is listed as such."""
    if not cfg.k_sweep:
        return pd.DataFrame(columns=["k", "model", "status", "val_acc", "interpretable", "unique_concepts",
                                     "concentration"])
    setup = cfg.setup()
    epochs = cfg.sweep_epochs or cfg.epochs
    train_ds, val_ds = (pair.train_ds, pair.val_ds) if pair is not None else datasets(setup, cfg.progress)
    root = broden_root or cfg.broden()
    rows = []
    for k in tqdm(cfg.k_sweep, desc="K sweep", disable=not cfg.progress, leave=False):
        key = cache_key(train=_setup_key(setup, epochs, k, len(val_ds.classes)), dissect=dataclasses.asdict(
            dissect_config(cfg)) | {"device": None, "progress": None}, root=str(root), layer=cfg.layer,
            conc_k=cfg.k, input_size=cfg.input_size)
        path = cache_dir("dka", "sweep") / f"{key}.json"
        if path.exists():
            rows.append(json.loads(path.read_text()))
            continue
        t = train_model(setup, k, epochs, cfg.device, cfg.progress, train_ds, val_ds)
        row = {"k": cfg.D if k is None else k, "model": "dense (K = D)" if k is None else f"DKA K={k}",
               "status": t.status, "epochs": epochs, "val_acc": t.val_acc, "interpretable": float("nan"),
               "unique_concepts": float("nan"), "concentration": float("nan")}
        if t.status == "ok":
            summ = dissect_model(cfg, t.model, root).summary()
            res = unit_contributions(t.model, cfg.layer, val_ds, batch_size=cfg.batch_size, device=cfg.device,
                                     progress=False)
            row.update(interpretable=summ["interpretable"], unique_concepts=summ["unique_concepts"],
                       concentration=float(concentration(res["contrib"], cfg.k).mean()))
        atomic_write_json(path, row)
        rows.append(row)
    return pd.DataFrame(rows)


def explanations(cfg: Config, pair: Pair, dissections: dict) -> dict[str, list[dict]]:
    """Per-image explanations of `cfg.explain_images` seeded validation images, for both models."""
    n = min(cfg.explain_images, len(pair.val_ds))
    idx = sorted(np.random.default_rng(cfg.seed).choice(len(pair.val_ds), n, replace=False).tolist())
    return {t.label: explain(t.model, cfg.layer, pair.val_ds, idx, unit_labels(dissections[t.label]),
                             top=5, device=cfg.device)
            for t in (pair.dense, pair.dka)}


# ============================================================================ figures
def plot_training(pair: Pair):
    """Validation accuracy per epoch, dense versus DKA."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    frames = [t.history.assign(model=t.label) for t in (pair.dense, pair.dka) if "val_acc" in t.history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if frames:
        sns.lineplot(data=pd.concat(frames), x="epoch", y="val_acc", hue="model", marker="o", ax=ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Dense head versus DKA head: same trunk, seed and recipe")
    fig.tight_layout()
    return fig


def plot_concentration(conc: Concentration, k: int):
    """Left: mean share of the explanation carried by the top-n units; right: per-image top-K share."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    sns.lineplot(data=conc.curves, x="units", y="share", hue="model", marker="o", ax=axes[0])
    axes[0].axvline(k, color="grey", ls=":", lw=1)
    axes[0].set_xlabel("top-n units by contribution to the true class")
    axes[0].set_ylabel("mean share of sum |contributions|")
    axes[0].set_title("Cumulative explanation share")
    sns.histplot(data=conc.per_image, x="share", hue="model", bins=30, stat="density", common_norm=False,
                 element="step", ax=axes[1])
    axes[1].set_xlabel(f"share carried by the top-{k} units (per validation image)")
    axes[1].set_ylabel("density")
    axes[1].set_title(f"Explanation concentration (K = {k})")
    fig.tight_layout()
    return fig


def plot_detectors(frame: pd.DataFrame, title: str):
    """Detectors per category, one bar per model."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if len(frame):
        sns.barplot(data=frame, x="category", y="detectors", hue="model", ax=ax)
    ax.set_xlabel("concept category (best label of the unit)")
    ax.set_ylabel("units with IoU >= threshold")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_sweep(sweep: pd.DataFrame, D: int):
    """Validation accuracy against interpretable units, one point per K (K = D is the dense head)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ok = sweep[sweep["status"] == "ok"]
    sc = ax.scatter(ok["interpretable"], ok["val_acc"], c=np.log2(ok["k"].astype(float)), cmap="viridis", s=60)
    for _, r in ok.iterrows():
        ax.annotate(f"K={'D' if r['k'] == D else int(r['k'])}", (r["interpretable"], r["val_acc"]),
                    textcoords="offset points", xytext=(5, 4), fontsize=9)
    if len(ok):
        fig.colorbar(sc, ax=ax, label="log2 K")
    ax.set_xlabel("interpretable units (IoU >= threshold)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"K sweep: accuracy versus interpretability (D = {D})")
    fig.tight_layout()
    return fig
