"""Dynamic-K activation: the routed head and the per-image explanation (Sun, Ravi & Singh, ICCV 2019).

For pooled features x (B x D) of a trunk and the head's weights W (C x D) and bias b (C):

    votes          v[b, c, i] = x[b, i] * W[c, i]
    dense head     logit[b, c] = sum_i v[b, c, i] + b[c]                      (nn.Linear)
    DKA head       logit[b, c] = sum_{i in top_K(v[b, c, :])} v[b, c, i] + b[c]

The top-K is over the signed votes; the gradient flows only through the K selected votes
(d logit[b, c] / d x[b, i] = W[c, i] and d logit[b, c] / d W[c, i] = x[b, i] for the selected i, 0
otherwise). Upstream `RouteFcMaxAct` (sunyiyou/dynamic-k-activation, models/route.py) computes
``(x[:, None] * W).topk(K, 2)[0].sum(2) + b``; with K = D it is the dense head.

The upstream demo explains a prediction by the contribution of unit i to the true class t,

    c[b, i] = mean_{h, w} f_i[b, h, w] * W[t, i]     (f: the maps whose global average pool is x)

and its share of the explanation, c[b, i] / sum_j |c[b, j]|. The *concentration* of an explanation
is the share carried by its K largest contributions.

This module holds
- `TopKRouteLinear`: the routed head (votes built for a chunk of classes at a time, backward pass
  through the B x C x K selected votes only);
- `to_dka`, `build`, `load_checkpoint`, `k_from_mark`, `head_k`, `feature_dim`: the head swapped
  into any model, and upstream checkpoints (``module.`` prefixes, ``rfc.*`` head keys);
- `check_layer`: the dissected layer must be the one whose global average pool feeds the head;
- `unit_contributions`, `concentration`, `concentration_curve`: the explanation above;
- `PUBLISHED` (the released model's dissection), `PAPER_ACCURACY_CLAIM` (the paper's words on
  accuracy, the claim the notebook tests) and `UPSTREAM_RECIPE` (upstream's training settings), each
  with its source.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import models
from ..errors import DataError, ParamError, require
from ..hooks import trace
from ..runtime import pick_device

#: The released DKA model's layer-4 dissection: ResNet-18 with K = 5 (upstream ``resnet18_fc_ma_t5``)
#: trained on Places365, dissected on Broden with NetDissect-Lite (quantile 0.005, IoU >= 0.04).
#: Source: upstream sunyiyou/dynamic-k-activation, ``pretrained/tally.csv`` (the tally its demo reads):
#: 512 units, 441 with score >= 0.04 ("interpretable"), 230 distinct (category, label) among them
#: ("unique_concepts"), 307 of them with a scene label ("scene_detectors").
#: Context for our numbers only: not comparable to a small net on the concept world.
PUBLISHED = {"model": "ResNet-18 DKA K=5 (published, Places365)", "layer": "layer4", "units": 512,
             "interpretable": 441, "unique_concepts": 230, "scene_detectors": 307}

#: What the paper says of accuracy, in its own words: DKA training shows "that no compromise in
#: attainable accuracy is involved". Source: the paper's abstract (Sun, Ravi & Singh, ICCV 2019,
#: pp. 4938-4947, CVF open-access page ``Sun_Adaptive_Activation_Thresholding_Dynamic_Routing_Type_
#: Behavior_for_Interpretability_in_ICCV_2019_paper.html``). The paper's accuracy table could not be
#: read here, so no accuracy number of the paper is quoted; the notebook tests this sentence as a
#: non-inferiority claim with a stated margin (`netanatomy.dka.run.Config.accuracy_margin`, ours).
PAPER_ACCURACY_CLAIM = "no compromise in attainable accuracy is involved"

#: Upstream's training settings. Source: sunyiyou/dynamic-k-activation ``train.py`` (``settings`` and
#: ``adjust_learning_rate``): SGD with momentum 0.9 and weight decay 1e-4, lr 0.1 divided by 10 every
#: EPOCHS // 3 = 30 epochs, 90 epochs, batch 256 at 224 px, ``torch.manual_seed(0)``, a batch loss
#: above 10 ends the epoch ("loss explosion"); ``--mark t5`` is K = 5 (``resnet18_fc_ma``, Places365).
UPSTREAM_RECIPE = {"epochs": 90, "lr": 0.1, "batch_size": 256, "momentum": 0.9, "weight_decay": 1e-4,
                   "lr_steps": 3, "gamma": 0.1, "max_loss": 10.0, "k": 5, "image_size": 224}


# ============================================================================ the routed layer
def check_k(k, in_features: int, param: str = "k") -> int:
    """K as an int, or ParamError unless it is an integer in [1, D]."""
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
        self.k = check_k(k, in_features)
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
    def from_linear(cls, linear: nn.Linear, k: int, **kwargs) -> TopKRouteLinear:
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


# ============================================================================ model surgery and checkpoints
def head_k(model: nn.Module) -> int | None:
    """K of the model's routed head, or None for a dense head."""
    _, module = models.head(model)
    return getattr(module, "k", None) if isinstance(module, TopKRouteLinear) else None


def feature_dim(model: str, width_mult: float = 1.0) -> int:
    """D, the number of features entering the head of architecture `model`."""
    return models.head(models.build(model, 2, width_mult=width_mult))[1].in_features


def to_dka(model: nn.Module, k: int, chunk_classes: int | None = None, max_votes: int = 1 << 22) -> nn.Module:
    """Replace the model's final linear layer (found by `models.head`) by a `TopKRouteLinear` with its weights."""
    name, module = models.head(model)
    if isinstance(module, TopKRouteLinear):
        module.k = check_k(k, module.in_features)
        return model
    if not isinstance(module, nn.Linear):
        raise ParamError("model", f"head {name!r} is a {type(module).__name__}, not a linear layer")
    models.set_head(model, TopKRouteLinear.from_linear(module, check_k(k, module.in_features),
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
    keys = [k.removeprefix("module.") for k in state]
    head_name, head = models.head(model)
    if any(k.startswith(UPSTREAM_HEAD_PREFIX) for k in keys) and not isinstance(head, TopKRouteLinear) \
            and head_name + "." != UPSTREAM_HEAD_PREFIX:
        raise DataError(where, "is an upstream DKA checkpoint (rfc.* head) but the model's head is dense; "
                               "build the model with k (e.g. k=5 for the released 't5' model)",
                        "a model built with dka.method.build(name, num_classes, k=K)")
    rename = {UPSTREAM_HEAD_PREFIX: head_name + "."} if head_name + "." != UPSTREAM_HEAD_PREFIX else None
    return models.load_weights(model, dict(state), rename=rename)


# ============================================================================ explanations
def _check_layer_feeds_head(model: nn.Module, layer: str, maps: torch.Tensor, logits: torch.Tensor) -> None:
    _, head = models.head(model)
    feats = maps.float().mean((2, 3))
    if feats.shape[1] != head.in_features or not torch.allclose(head(feats), logits.float(), rtol=1e-3, atol=1e-3):
        raise ParamError("layer", f"the head's input is not the global average pool of layer {layer!r}; "
                                  f"give the last convolutional stage (e.g. models.layers(name, 'last'))")


@torch.no_grad()
def check_layer(model: nn.Module, layer: str, input_size: int) -> None:
    """ParamError (naming `layer`) unless `layer` is a module of `model` whose global average pool is
    the head's input: checked on one random image of `input_size` px, with the model in eval mode."""
    if layer not in dict(model.named_modules()):
        raise ParamError("layer", f"no layer named {layer!r} in {type(model).__name__}; give the last "
                                  f"convolutional stage (e.g. models.layers(name, 'last'))")
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    x = torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0)).to(param)
    try:
        with trace(model, [layer], detach=True) as t:
            logits = model(x)
        if t[layer].dim() != 4:
            raise ParamError("layer", f"layer {layer!r} gives {t[layer].dim()}-d output, not a stack of maps")
        _check_layer_feeds_head(model, layer, t[layer], logits)
    finally:
        model.train(was_training)


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
    return {k: torch.cat(v) for k, v in out.items() if v}


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
