"""The Heterogeneity Hypothesis (Li et al., CVPR 2021): widen, shrink to a FLOPs budget, train the LW-DNA.

The method, as the upstream code (ofsoundof/Heterogeneity_Hypothesis, `main_hh_grad.py`) does it:

1. **Widen** a ResNet by `width_mult` (every channel count; about `width_mult**2` times the FLOPs).
2. Replace each convolution by a **hypernetwork convolution** (DHP): the layer owns no kernel; the
   kernel is generated from the outer product of the input latent vector `z_in` (owned by the layer
   that writes the input) and the layer's output latent vector `z_out`, through per-layer
   embeddings (`embedding_dim`). One latent vector per stage is shared by every convolution that
   writes the residual stream (the last conv of each block and the downsample; on CIFAR ResNets
   also the stem), so residual additions stay aligned.
3. **Search**: a few batches of SGD on the hypernetwork model (upstream: 2 batches), then a score
   per channel: the latent vector's magnitude (upstream, ResNets), its gradient, or random
   (an ablation upstream cannot run).
4. **Shrink**: a binary search on one global threshold so that FLOPs(kept) / FLOPs(widened) reaches
   `ratio`; every vector keeps at least `floor(len * remain_percentage)` channels, the last
   stage's vector at least `floor(len * linear_percentage)`, the input is never pruned.
5. **Materialise** the kept kernels, BatchNorm entries and classifier columns into an ordinary
   network (`models.CifarResNet` or a torchvision ResNet with per-layer widths) and train it with
   the baseline's recipe (`train.fit`: resumable, DDP under torchrun).

FLOPs are counted 2 per multiply-add (convolutions and the classifier, as `torch.utils.flop_counter`
counts them); the analytic count of a channel configuration (`analytic_flops`) is cross-checked
against `stats.count_flops` on the materialised network.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import hooks, models, stats
from .errors import require
from .runtime import atomic_save, cache_dir, cache_key, pick_device, seed_everything
from .train import TrainConfig, fit, recipe_key

MODELS = ("cifar_resnet", "imagenet_resnet")
SCORES = ("magnitude", "gradient", "random")
IMAGENET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
FLOPS_NOTE = stats.FLOPS_CONVENTION


# ----------------------------------------------------------------------------- configuration
@dataclasses.dataclass
class HeteroConfig:
    """Architecture and search settings (upstream defaults where they exist)."""

    model: str = "cifar_resnet"        # cifar_resnet (basic blocks, depth 6n+2) | imagenet_resnet (bottleneck, 50/101/152)
    depth: int = 20
    width_mult: float = 2.0            # widen every channel count by this factor (>= 1)
    ratio: float = 0.23                # target FLOPs(LW-DNA) / FLOPs(widened), in (0, 1]
    remain_percentage: float = 0.4     # every latent vector keeps at least floor(len * this) channels
    linear_percentage: float = 0.45    # the last stage's vector (classifier input) keeps at least floor(len * this)
    score: str = "magnitude"           # magnitude | gradient | random
    search_batches: int = 2            # SGD batches on the hypernetwork model before scoring (upstream: 2)
    search_lr: float = 0.1
    search_batch_size: int | None = None
    embedding_dim: int = 2             # hypernetwork embedding dimension E
    prune_threshold: float = 5e-3      # binary search: start threshold
    step: float = 0.01                 # binary search: start step
    tolerance: float = 1e-3            # binary search: |FLOPs ratio - ratio| that counts as reached
    max_iter: int = 100                # binary search: at most this many steps
    num_classes: int = 10
    input_size: int = 32

    def __post_init__(self) -> None:
        require(self.model in MODELS, "model", f"must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.model == "cifar_resnet":
            require(isinstance(self.depth, int) and self.depth >= 8 and (self.depth - 2) % 6 == 0, "depth",
                    f"a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, ...), got {self.depth!r}")
        else:
            require(self.depth in IMAGENET_BLOCKS, "depth",
                    f"an ImageNet bottleneck ResNet has depth {', '.join(map(str, IMAGENET_BLOCKS))}, got {self.depth!r}")
        _check_number("width_mult", self.width_mult)
        require(self.width_mult >= 1, "width_mult", f"must be >= 1 (the network is widened, then shrunk), got {self.width_mult}")
        _check_number("ratio", self.ratio)
        require(0 < self.ratio <= 1, "ratio", f"must be in (0, 1] (FLOPs of the LW-DNA over the widened net), got {self.ratio}")
        for name in ("remain_percentage", "linear_percentage"):
            _check_number(name, getattr(self, name))
            require(0 <= getattr(self, name) <= 1, name, f"must be in [0, 1], got {getattr(self, name)}")
        require(self.score in SCORES, "score", f"must be one of {', '.join(SCORES)}, got {self.score!r}")
        require(isinstance(self.search_batches, int) and self.search_batches >= 1, "search_batches",
                f"must be an integer >= 1, got {self.search_batches!r}")
        require(isinstance(self.embedding_dim, int) and self.embedding_dim >= 1, "embedding_dim",
                f"must be an integer >= 1, got {self.embedding_dim!r}")
        require(self.search_batch_size is None or (isinstance(self.search_batch_size, int) and self.search_batch_size >= 1),
                "search_batch_size", f"must be None or an integer >= 1, got {self.search_batch_size!r}")
        require(self.prune_threshold >= 0 and self.step > 0 and self.tolerance > 0 and self.max_iter >= 1,
                "prune_threshold", "binary search needs prune_threshold >= 0, step > 0, tolerance > 0, max_iter >= 1")
        require(isinstance(self.num_classes, int) and self.num_classes >= 1, "num_classes", f"must be >= 1, got {self.num_classes!r}")
        require(isinstance(self.input_size, int) and self.input_size >= 8, "input_size", f"must be >= 8, got {self.input_size!r}")


def _check_number(name: str, value) -> None:
    require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), name,
            f"must be a number, got {value!r}")


# ----------------------------------------------------------------------------- architecture description
@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """One convolution: its module path in the hypernetwork model, its target state-dict prefixes,
    the latent vectors of its input and output, kernel, stride and output size."""

    name: str
    weight: str
    bn: str
    vin: str
    vout: str
    k: int
    stride: int
    out_hw: tuple[int, int]
    relu: bool


@dataclasses.dataclass
class Arch:
    """A ResNet as latent vectors (name -> full length) and convolutions reading/writing them."""

    model: str
    depth: int
    width_mult: float
    num_classes: int
    input_size: int
    vectors: dict[str, int]
    last: str                      # the vector read by the classifier
    convs: list[ConvSpec]
    blocks: list[list[dict]]       # per stage, per block: {"conv1": ConvSpec, ..., "shortcut": ConvSpec|None}
    head: str                      # "linear" (CIFAR) or "fc" (torchvision)

    def full_counts(self) -> dict[str, int]:
        return dict(self.vectors)


def _out(h: int, k: int, s: int, p: int | None = None) -> int:
    p = k // 2 if p is None else p
    return (h + 2 * p - k) // s + 1


def architecture(model: str = "cifar_resnet", depth: int = 20, width_mult: float = 1.0, num_classes: int = 10,
                 input_size: int = 32) -> Arch:
    """The latent-vector description of a (widened) ResNet; the layout follows upstream resnet_dhp_share /
    resnet_imagenet_dhp and the module names follow `models.CifarResNet` / torchvision ResNet."""
    cfg = HeteroConfig(model=model, depth=depth, width_mult=max(width_mult, 1.0), num_classes=num_classes,
                       input_size=input_size)  # validation only (width < 1 is allowed for baselines/tests)
    del cfg
    h = input_size
    vectors: dict[str, int] = {"input": 3}
    convs: list[ConvSpec] = []
    blocks: list[list[dict]] = []
    if model == "cifar_resnet":
        n = (depth - 2) // 6
        widths = [max(1, int(c * width_mult)) for c in (16, 32, 64)]
        for s, w in enumerate(widths, 1):
            vectors[f"stage{s}"] = w
        stem = ConvSpec("conv1", "conv1", "bn1", "input", "stage1", 3, 1, (h, h), True)
        convs.append(stem)
        prev = "stage1"
        for s in range(1, 4):
            stage = []
            for b in range(n):
                stride = 2 if (s > 1 and b == 0) else 1
                inner = f"layer{s}_{b}_1"
                vectors[inner] = widths[s - 1]
                ho = _out(h, 3, stride)
                p = f"layer{s}.{b}"
                c1 = ConvSpec(f"{p}.conv1", f"{p}.conv1", f"{p}.bn1", prev, inner, 3, stride, (ho, ho), True)
                c2 = ConvSpec(f"{p}.conv2", f"{p}.conv2", f"{p}.bn2", inner, f"stage{s}", 3, 1, (ho, ho), False)
                sc = None
                if stride != 1 or prev != f"stage{s}":
                    sc = ConvSpec(f"{p}.shortcut", f"{p}.shortcut.0", f"{p}.shortcut.1", prev, f"stage{s}", 1, stride,
                                  (ho, ho), False)
                convs += [c1, c2] + ([sc] if sc else [])
                stage.append({"conv1": c1, "conv2": c2, "shortcut": sc})
                prev, h = f"stage{s}", ho
            blocks.append(stage)
        return Arch(model, depth, width_mult, num_classes, input_size, vectors, "stage3", convs, blocks, "linear")
    # torchvision-style bottleneck ResNet (v1.5: stride on the 3x3 conv)
    planes = [max(1, int(c * width_mult)) for c in (64, 128, 256, 512)]
    for s, w in enumerate(planes, 1):
        vectors[f"stage{s}"] = 4 * w
    vectors["stem"] = planes[0]
    h1 = _out(h, 7, 2, 3)
    convs.append(ConvSpec("conv1", "conv1", "bn1", "input", "stem", 7, 2, (h1, h1), True))
    h = _out(h1, 3, 2, 1)   # max pool
    prev = "stem"
    for s, nb in enumerate(IMAGENET_BLOCKS[depth], 1):
        stage = []
        for b in range(nb):
            stride = 2 if (s > 1 and b == 0) else 1
            i1, i2 = f"layer{s}_{b}_1", f"layer{s}_{b}_2"
            vectors[i1] = vectors[i2] = planes[s - 1]
            ho = _out(h, 3, stride)
            p = f"layer{s}.{b}"
            c1 = ConvSpec(f"{p}.conv1", f"{p}.conv1", f"{p}.bn1", prev, i1, 1, 1, (h, h), True)
            c2 = ConvSpec(f"{p}.conv2", f"{p}.conv2", f"{p}.bn2", i1, i2, 3, stride, (ho, ho), True)
            c3 = ConvSpec(f"{p}.conv3", f"{p}.conv3", f"{p}.bn3", i2, f"stage{s}", 1, 1, (ho, ho), False)
            sc = None
            if b == 0:
                sc = ConvSpec(f"{p}.downsample", f"{p}.downsample.0", f"{p}.downsample.1", prev, f"stage{s}", 1,
                              stride, (ho, ho), False)
            convs += [c1, c2, c3] + ([sc] if sc else [])
            stage.append({"conv1": c1, "conv2": c2, "conv3": c3, "shortcut": sc})
            prev, h = f"stage{s}", ho
        blocks.append(stage)
    return Arch(model, depth, width_mult, num_classes, input_size, vectors, "stage4", convs, blocks, "fc")


def arch_for(cfg: HeteroConfig, widened: bool = True) -> Arch:
    """The widened (or, with widened=False, the width-1 baseline) architecture of a configuration."""
    return architecture(cfg.model, cfg.depth, cfg.width_mult if widened else 1.0, cfg.num_classes, cfg.input_size)


def analytic_flops(arch: Arch, counts: dict[str, int] | None = None) -> int:
    """FLOPs (2 per multiply-add) of convolutions and classifier for a channel configuration."""
    c = counts or arch.vectors
    total = sum(2 * c[s.vin] * c[s.vout] * s.k * s.k * s.out_hw[0] * s.out_hw[1] for s in arch.convs)
    return int(total + 2 * c[arch.last] * arch.num_classes)


def analytic_params(arch: Arch, counts: dict[str, int] | None = None) -> int:
    """Parameters (conv kernels, BatchNorm weight and bias, classifier weight and bias) of a configuration."""
    c = counts or arch.vectors
    total = sum(c[s.vin] * c[s.vout] * s.k * s.k + 2 * c[s.vout] for s in arch.convs)
    return int(total + c[arch.last] * arch.num_classes + arch.num_classes)


def layer_channels(arch: Arch, counts: dict[str, int] | None = None) -> pd.DataFrame:
    """Per convolution: its name, latent vector and output channels under `counts`."""
    c = counts or arch.vectors
    return pd.DataFrame([{"layer": s.weight, "vector": s.vout, "out_channels": c[s.vout]} for s in arch.convs])


# ----------------------------------------------------------------------------- ordinary networks
def build_network(arch: Arch, counts: dict[str, int] | None = None) -> nn.Module:
    """An ordinary (weight-owning) network with the channel configuration `counts`.

    CIFAR: `models.CifarResNet` with per-stage widths, per-block inner widths, the stem writing the
    stage-1 residual stream and option-B (1x1 conv) shortcuts. ImageNet: a torchvision ResNet whose
    convolutions, BatchNorms and fc are resized per layer (state-dict keys stay torchvision's).
    """
    c = counts or arch.vectors
    if arch.model == "cifar_resnet":
        inner = [c[blk["conv1"].vout] for stage in arch.blocks for blk in stage]
        return models.CifarResNet(arch.depth, arch.num_classes, stage_channels=[c[f"stage{s}"] for s in (1, 2, 3)],
                                  block_channels=inner, stem_channels=c["stage1"], shortcut="B")
    block = torchvision.models.resnet.Bottleneck
    net = torchvision.models.resnet.ResNet(block, list(IMAGENET_BLOCKS[arch.depth]), num_classes=arch.num_classes)
    for s in arch.convs:
        conv = nn.Conv2d(c[s.vin], c[s.vout], s.k, s.stride, padding=3 if s.k == 7 else s.k // 2, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        _set_module(net, s.weight, conv)
        _set_module(net, s.bn, nn.BatchNorm2d(c[s.vout]))
    _set_module(net, "fc", nn.Linear(c[arch.last], arch.num_classes))
    return net


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_name, _, attr = path.rpartition(".")
    parent = hooks.get_module(root, parent_name) if parent_name else root
    setattr(parent, attr, module)


# ----------------------------------------------------------------------------- hypernetwork model (DHP)
class HyperConv(nn.Module):
    """A convolution whose kernel is generated from (z_in, z_out) by a per-layer hypernetwork, then BN (+ReLU).

    kernel[o, i] = W2[i, o] @ ((z_in[i] z_out[o] + b0[i, o]) W1[i, o] + b1[i, o]) + b2[i, o]
    with W1 (C_in, C_out, E) ~ U(+-sqrt(3)) and W2 (C_in, C_out, k^2, E) ~ U(+-sqrt(3 / (E C_in k^2)))
    (hyperfan-in), biases zero, as upstream `conv_dhp`.
    """

    def __init__(self, spec: ConvSpec, cin: int, cout: int, embedding_dim: int):
        super().__init__()
        self.spec, self.vin, self.vout = spec, spec.vin, spec.vout
        self.k, self.stride = spec.k, spec.stride
        self.padding = 3 if spec.k == 7 else spec.k // 2
        self.relu = spec.relu
        e, k2 = embedding_dim, spec.k * spec.k
        b1 = math.sqrt(3.0)
        b2 = math.sqrt(3.0 / (e * cin * k2))
        self.weight1 = nn.Parameter(torch.empty(cin, cout, e).uniform_(-b1, b1))
        self.weight2 = nn.Parameter(torch.empty(cin, cout, k2, e).uniform_(-b2, b2))
        self.bias0 = nn.Parameter(torch.zeros(cin, cout))
        self.bias1 = nn.Parameter(torch.zeros(cin, cout, e))
        self.bias2 = nn.Parameter(torch.zeros(cin, cout, k2))
        self.bn = nn.BatchNorm2d(cout)

    def kernel(self, z_in: torch.Tensor, z_out: torch.Tensor, idx_in: torch.Tensor | None = None,
               idx_out: torch.Tensor | None = None) -> torch.Tensor:
        """The generated kernel (C_out, C_in, k, k); with indices, only the kept rows/columns (z given sliced)."""
        w1, w2, b0, b1, b2 = self.weight1, self.weight2, self.bias0, self.bias1, self.bias2
        if idx_in is not None:
            w1, w2, b0, b1, b2 = (t.index_select(0, idx_in) for t in (w1, w2, b0, b1, b2))
        if idx_out is not None:
            w1, w2, b0, b1, b2 = (t.index_select(1, idx_out) for t in (w1, w2, b0, b1, b2))
        w = z_in.unsqueeze(1) * z_out.unsqueeze(0) + b0              # (ci, co)
        w = w.unsqueeze(-1) * w1 + b1                                 # (ci, co, E)
        w = torch.matmul(w2, w.unsqueeze(-1)).squeeze(-1) + b2         # (ci, co, k^2)
        return w.reshape(len(z_in), len(z_out), self.k, self.k).permute(1, 0, 2, 3)

    def forward(self, x: torch.Tensor, z: nn.ParameterDict) -> torch.Tensor:
        out = self.bn(F.conv2d(x, self.kernel(z[self.vin], z[self.vout]), stride=self.stride, padding=self.padding))
        return F.relu(out) if self.relu else out


class HyperBlock(nn.Module):
    """A residual block (basic or bottleneck) of hypernetwork convolutions."""

    def __init__(self, blk: dict, arch: Arch, embedding_dim: int):
        super().__init__()
        self.names = [k for k in ("conv1", "conv2", "conv3") if k in blk]
        for key in self.names:
            s = blk[key]
            setattr(self, key, HyperConv(s, arch.vectors[s.vin], arch.vectors[s.vout], embedding_dim))
        sc = blk["shortcut"]
        short = "shortcut" if arch.model == "cifar_resnet" else "downsample"
        self.short_name = short if sc is not None else None
        if sc is not None:
            setattr(self, short, HyperConv(sc, arch.vectors[sc.vin], arch.vectors[sc.vout], embedding_dim))

    def forward(self, x: torch.Tensor, z: nn.ParameterDict) -> torch.Tensor:
        out = x
        for key in self.names:
            out = getattr(self, key)(out, z)
        identity = getattr(self, self.short_name)(x, z) if self.short_name else x
        return F.relu(out + identity)


class HyperResNet(nn.Module):
    """The widened ResNet with DHP hypernetwork convolutions and one latent vector per stage/inner width."""

    def __init__(self, arch: Arch, embedding_dim: int = 2):
        super().__init__()
        self.arch = arch
        self.latents = nn.ParameterDict({name: nn.Parameter(torch.randn(n)) for name, n in arch.vectors.items()})
        stem = arch.convs[0]
        self.conv1 = HyperConv(stem, 3, arch.vectors[stem.vout], embedding_dim)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if arch.model == "imagenet_resnet" else nn.Identity()
        self.num_stages = len(arch.blocks)
        for s, stage in enumerate(arch.blocks, 1):
            setattr(self, f"layer{s}", nn.ModuleList(HyperBlock(blk, arch, embedding_dim) for blk in stage))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(arch.vectors[arch.last], arch.num_classes)

    def hyper_convs(self) -> dict[str, HyperConv]:
        """Module path -> HyperConv (paths equal ConvSpec.name)."""
        return {name: m for name, m in self.named_modules() if isinstance(m, HyperConv)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.latents
        out = self.maxpool(self.conv1(x, z))
        for s in range(1, self.num_stages + 1):
            for block in getattr(self, f"layer{s}"):
                out = block(out, z)
        return self.fc(torch.flatten(self.pool(out), 1))


def masked_forward(hyper: HyperResNet, masks: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The hypernetwork model's output with pruned channels zeroed (each conv output gated by its vector's mask)."""
    gates = {name: masks[m.vout].to(x.dtype) for name, m in hyper.hyper_convs().items()}
    with hooks.channel_gates(hyper, gates):
        return hyper(x)


# ----------------------------------------------------------------------------- search, scores, shrink
def search(hyper: HyperResNet, train_ds, cfg: HeteroConfig, batch_size: int, seed: int = 0,
           device: str | torch.device = "auto", weight_decay: float = 1e-4, progress: bool = True) -> pd.DataFrame:
    """The short SGD phase on the hypernetwork model (upstream: `--epochs_grad 1` cut to 2 batches).

    Leaves each latent vector's gradient of the last batch in `.grad` (the 'gradient' score).
    Returns the per-batch loss.
    """
    device = pick_device(device)
    hyper.to(device).train()
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_ds, batch_size=cfg.search_batch_size or batch_size, shuffle=True, generator=gen,
                        drop_last=len(train_ds) >= (cfg.search_batch_size or batch_size))
    opt = torch.optim.SGD(hyper.parameters(), lr=cfg.search_lr, momentum=0.9, weight_decay=weight_decay)
    rows = []
    it = iter(loader)
    for step in tqdm(range(cfg.search_batches), desc="search", disable=not progress, leave=False):
        try:
            x, y = next(it)[:2]
        except StopIteration:
            it = iter(loader)
            x, y = next(it)[:2]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(hyper(x.to(device)), torch.as_tensor(y).to(device))
        loss.backward()
        grads = {k: v.grad.detach().clone() for k, v in hyper.latents.items() if v.grad is not None}
        opt.step()
        rows.append({"batch": step + 1, "loss": loss.item()})
    hyper.last_grads = grads
    return pd.DataFrame(rows)


def channel_scores(hyper: HyperResNet, mode: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per latent vector, a score per channel (higher = keep): |z|, |dL/dz| of the last search batch, or U(0,1)."""
    require(mode in SCORES, "score", f"must be one of {', '.join(SCORES)}, got {mode!r}")
    if mode == "magnitude":
        return {k: v.detach().abs().cpu() for k, v in hyper.latents.items()}
    if mode == "gradient":
        grads = getattr(hyper, "last_grads", None)
        require(bool(grads), "score", "'gradient' needs the search phase to run first (no latent gradients)")
        return {k: grads[k].abs().cpu() if k in grads else torch.zeros(len(v)) for k, v in hyper.latents.items()}
    gen = torch.Generator().manual_seed(10_007 * seed + 17)
    return {k: torch.rand(len(v), generator=gen) for k, v in hyper.latents.items()}


def floors(arch: Arch, remain_percentage: float, linear_percentage: float) -> dict[str, int]:
    """Minimum kept channels per vector: all of the input, floor(len * linear) of the last stage, floor(len * remain) else."""
    out = {}
    for name, n in arch.vectors.items():
        if name == "input":
            out[name] = n
        elif name == arch.last:
            out[name] = min(n, max(1, int(n * linear_percentage)))
        else:
            out[name] = min(n, max(1, int(n * remain_percentage)))
    return out


def masks_at(scores: dict[str, torch.Tensor], floor: dict[str, int], threshold: float) -> dict[str, torch.Tensor]:
    """Keep channel i of vector v when score >= min(threshold, k-th largest score of v), k = floor[v] (upstream rule)."""
    masks = {}
    for name, s in scores.items():
        if name == "input":
            masks[name] = torch.ones(len(s), dtype=torch.bool)
            continue
        kth = s.topk(floor[name]).values[-1].item()
        masks[name] = s >= min(threshold, kth)
    return masks


def counts_of(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    return {k: int(m.sum()) for k, m in masks.items()}


@dataclasses.dataclass
class ShrinkResult:
    """Outcome of the binary search: the chosen threshold, its masks and FLOPs ratio, whether it reached the target."""

    threshold: float
    ratio: float
    target: float
    reached: bool
    message: str
    masks: dict[str, torch.Tensor]
    counts: dict[str, int]
    trace: pd.DataFrame


def _refine(arch: Arch, scores: dict[str, torch.Tensor], floor: dict[str, int], full: int, target: float,
            start: int) -> list[dict]:
    """Exact search when upstream's walk missed the tolerance: the kept set only changes at score values, and
    the FLOPs ratio falls monotonically with the threshold, so bisect over the sorted distinct scores."""
    cands = torch.unique(torch.cat([s.float() for k, s in scores.items() if k != "input"])).tolist()
    cands = [0.0] + cands
    rows, memo = [], {}

    def ratio_at(i: int) -> float:
        if i not in memo:
            counts = counts_of(masks_at(scores, floor, cands[i]))
            memo[i] = analytic_flops(arch, counts) / full
            rows.append({"iteration": start + len(rows) + 1, "threshold": cands[i], "step": float("nan"),
                         "flops_ratio": memo[i], "params_ratio": analytic_params(arch, counts) / analytic_params(arch),
                         "refine": True})
        return memo[i]

    lo, hi = 0, len(cands) - 1            # ratio(lo) >= ratio(hi); find the last index with ratio >= target
    if ratio_at(hi) >= target:
        return rows
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ratio_at(mid) >= target:
            lo = mid
        else:
            hi = mid
    ratio_at(lo), ratio_at(hi)
    return rows


def shrink(arch: Arch, scores: dict[str, torch.Tensor], cfg: HeteroConfig) -> ShrinkResult:
    """Upstream's binary search on one global threshold so that FLOPs(kept)/FLOPs(widened) hits `cfg.ratio`.

    Start threshold `prune_threshold`, step `step`; the threshold moves up while the ratio is above
    the target, down while below, and the step halves each time the ratio crosses the target; it
    stops when |ratio - target| <= tolerance or after `max_iter` steps. Where upstream would stop
    silently off target, an exact bisection over the threshold's breakpoints (the distinct scores)
    follows (trace rows with phase 'refine'); if no threshold lands within tolerance, the closest
    configuration seen is returned with `reached=False` and a message saying why.
    """
    floor = floors(arch, cfg.remain_percentage, cfg.linear_percentage)
    full = analytic_flops(arch)
    target, tol = cfg.ratio, cfg.tolerance
    pt, step, status, counter = cfg.prune_threshold, cfg.step, 1.0, 1
    rows = []
    while abs(status - target) > tol and counter <= cfg.max_iter:
        status_old = status
        counts = counts_of(masks_at(scores, floor, pt))
        status = analytic_flops(arch, counts) / full
        rows.append({"iteration": counter, "threshold": pt, "step": step, "flops_ratio": status,
                     "params_ratio": analytic_params(arch, counts) / analytic_params(arch)})
        if abs(status - target) <= tol:
            break
        if counter > 1 and (status_old >= target) == (status < target):
            step /= 2
        if status > target:
            pt += step
        else:
            pt = max(pt - step, 0.0)
        counter += 1
        if status <= 0:
            break
    if rows and abs(rows[-1]["flops_ratio"] - target) > tol:
        rows += _refine(arch, scores, floor, full, target, len(rows))
    trace = pd.DataFrame(rows)
    trace["phase"] = np.where(trace["refine"].fillna(False).astype(bool), "refine", "upstream") \
        if "refine" in trace else "upstream"
    trace = trace.drop(columns=["refine"], errors="ignore")
    err = (trace["flops_ratio"] - target).abs()
    best = trace.loc[err.idxmin()] if not trace.empty else None
    reached = bool(err.min() <= tol)
    threshold = float(best["threshold"])
    masks = masks_at(scores, floor, threshold)
    counts = counts_of(masks)
    ratio = analytic_flops(arch, counts) / full
    if reached:
        n_up = int((trace["phase"] == "upstream").sum())
        how = (f"in {n_up} upstream steps" if best["phase"] == "upstream" else
               f"after refinement (upstream's {n_up} steps ended at {trace['flops_ratio'].iloc[n_up - 1]:.4f})")
        message = f"reached FLOPs ratio {ratio:.4f} (target {target}, tolerance {tol}) {how}"
    else:
        floor_ratio = analytic_flops(arch, floor) / full
        why = (f"the floors (remain/linear percentages) keep at least {floor_ratio:.4f} of the FLOPs"
               if floor_ratio > target + tol else
               "no threshold gives a ratio within tolerance: channel counts are discrete (every breakpoint "
               "of the threshold was checked)")
        message = (f"did NOT reach the target FLOPs ratio {target} within {tol}: closest {ratio:.4f} "
                   f"after {len(trace)} steps; {why}")
    return ShrinkResult(threshold, ratio, target, reached, message, masks, counts, trace)


# ----------------------------------------------------------------------------- materialise
@torch.no_grad()
def materialise(hyper: HyperResNet, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Generate the kept kernels from the hypernetwork, slice BN and classifier: an ordinary network (CPU)."""
    arch = hyper.arch
    counts = counts_of(masks)
    net = build_network(arch, counts)
    idx = {k: m.nonzero().squeeze(1) for k, m in masks.items()}
    convs = hyper.hyper_convs()
    state = {}
    for s in arch.convs:
        m = convs[s.name]
        dev = m.weight1.device
        ii, io = idx[s.vin].to(dev), idx[s.vout].to(dev)
        zi, zo = hyper.latents[s.vin].index_select(0, ii), hyper.latents[s.vout].index_select(0, io)
        state[f"{s.weight}.weight"] = m.kernel(zi, zo, ii, io).detach().cpu().contiguous()
        io = io.cpu()
        bn = m.bn
        for n in ("weight", "bias", "running_mean", "running_var"):
            state[f"{s.bn}.{n}"] = getattr(bn, n).detach().cpu().index_select(0, io).clone()
        state[f"{s.bn}.num_batches_tracked"] = bn.num_batches_tracked.detach().cpu().clone()
    state[f"{arch.head}.weight"] = hyper.fc.weight.detach().cpu().index_select(1, idx[arch.last]).clone()
    state[f"{arch.head}.bias"] = hyper.fc.bias.detach().cpu().clone()
    models.load_weights(net, state)
    return net


# ----------------------------------------------------------------------------- data
#: concept-world sizes of this notebook (32 px so a CIFAR ResNet applies unchanged)
WORLD_SCALES = {"default": dict(n_train=2000, n_val=500), "smoke": dict(n_train=320, n_val=160)}


def load_data(dataset: str = "concept_world", data_root: str | None = None, scale: str = "default",
              image_size: int = 32, progress: bool = True):
    """(train_ds with augmentation, val_ds, class names, input size) for the notebook."""
    from . import data, world as world_mod

    if dataset == "concept_world":
        require(scale in WORLD_SCALES, "scale", f"must be one of {', '.join(WORLD_SCALES)}, got {scale!r}")
        w = world_mod.WorldConfig(image_size=image_size, **WORLD_SCALES[scale])
        train_ds = data.get_dataset("concept_world", split="train", train_aug=True, world=w, progress=progress)
        val_ds = data.get_dataset("concept_world", split="val", world=w, progress=progress)
        size = image_size
    else:
        size = 32 if dataset == "cifar10" else image_size
        train_ds = data.get_dataset(dataset, data_root, split="train", train_aug=True, image_size=size)
        val_ds = data.get_dataset(dataset, data_root, split="val", image_size=size)
    return train_ds, val_ds, list(val_ds.classes), size


def data_key(dataset: str, data_root, scale: str, image_size: int) -> dict:
    """What identifies the data in cache keys."""
    if dataset == "concept_world":
        from .world import WORLD_VERSION
        return {"dataset": dataset, "scale": WORLD_SCALES.get(scale, scale), "image_size": image_size,
                "aug": "rrc0.6+flip", "world_version": WORLD_VERSION}
    return {"dataset": dataset, "root": str(Path(data_root).resolve()) if data_root else None, "image_size": image_size}


# ----------------------------------------------------------------------------- experiment
def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _broadcast_scores(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Under DDP every rank must build the same architecture: take rank 0's scores."""
    if not (dist.is_available() and dist.is_initialized()):
        return scores
    names = list(scores)
    flat = torch.cat([scores[k].float() for k in names])
    if dist.get_backend() == "nccl":
        flat = flat.cuda()
    dist.broadcast(flat, 0)
    out, i = {}, 0
    for k in names:
        n = len(scores[k])
        out[k] = flat[i:i + n].cpu()
        i += n
    return out


def _recipe_key(recipe: TrainConfig) -> dict:
    return {k: v for k, v in recipe_key(recipe).items() if k != "seed"}  # each run's seed is keyed on its own


def _train_and_measure(net: nn.Module, arch: Arch, counts: dict[str, int], train_ds, val_ds, recipe: TrainConfig,
                       folder: Path) -> dict:
    history = fit(net, train_ds, val_ds, recipe, out_dir=folder)
    net.cpu().eval()
    flops = stats.count_flops(net, (1, 3, arch.input_size, arch.input_size))
    result = {"val_acc": float(history["val_acc"].iloc[-1]) if "val_acc" in history else float("nan"),
              "train_acc": float(history["train_acc"].iloc[-1]) if len(history) else float("nan"),
              "flops": flops, "flops_analytic": analytic_flops(arch, counts),
              "params": stats.count_params(net), "params_analytic": analytic_params(arch, counts),
              "channels": counts, "history": history.to_dict("records")}
    return result


def run_baseline(cfg: HeteroConfig, recipe: TrainConfig, train_ds, val_ds, data_id: dict, seed: int) -> dict:
    """Train the regular width-1 network with `recipe` (cached by configuration)."""
    arch = arch_for(cfg, widened=False)
    key = cache_key(kind="baseline", model=cfg.model, depth=cfg.depth, num_classes=cfg.num_classes,
                    input_size=cfg.input_size, recipe=_recipe_key(recipe), data=data_id, seed=seed)
    folder = cache_dir("hetero", f"baseline-{key}")
    done = folder / "result.pt"
    if done.exists():
        return torch.load(done, map_location="cpu", weights_only=False)
    seed_everything(seed)
    net = build_network(arch)
    result = _train_and_measure(net, arch, arch.vectors, train_ds, val_ds, dataclasses.replace(recipe, seed=seed), folder)
    result.update({"network": "baseline", "score": "-", "seed": seed})
    if _rank() == 0:
        atomic_save(result, done)
    return result


def run_lwdna(cfg: HeteroConfig, recipe: TrainConfig, train_ds, val_ds, data_id: dict, seed: int,
              modes: Sequence[str], progress: bool = True) -> list[dict]:
    """Widen, search, shrink and train the LW-DNA for each scoring mode of one seed (one search per seed,
    shared by the modes, so they differ only in how channels are scored). Cached per (config, seed, mode)."""
    arch = arch_for(cfg, widened=True)
    search_key = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "score"}
    folders, results = {}, {}
    for mode in modes:
        key = cache_key(kind="lwdna", search=search_key, score=mode, recipe=_recipe_key(recipe), data=data_id, seed=seed)
        folders[mode] = cache_dir("hetero", f"lwdna-{mode}-{key}")
        if (folders[mode] / "result.pt").exists():
            results[mode] = torch.load(folders[mode] / "result.pt", map_location="cpu", weights_only=False)
    todo = [m for m in modes if m not in results]
    if todo:
        init_ready = all((folders[m] / "init.pt").exists() for m in todo)
        if not init_ready:
            seed_everything(seed)
            hyper = HyperResNet(arch, cfg.embedding_dim)
            losses = search(hyper, train_ds, cfg, recipe.batch_size, seed, recipe.device, recipe.weight_decay, progress)
            hyper.cpu().eval()
            for mode in todo:
                scores = _broadcast_scores(channel_scores(hyper, mode, seed))
                res = shrink(arch, scores, dataclasses.replace(cfg, score=mode))
                net = materialise(hyper, res.masks)
                if _rank() == 0:
                    atomic_save({"state": net.state_dict(), "counts": res.counts, "threshold": res.threshold,
                                 "ratio": res.ratio, "reached": res.reached, "message": res.message,
                                 "trace": res.trace.to_dict("records"), "search_loss": losses.to_dict("records")},
                                folders[mode] / "init.pt")
            del hyper
            if dist.is_available() and dist.is_initialized():
                dist.barrier()
        for mode in todo:
            init = torch.load(folders[mode] / "init.pt", map_location="cpu", weights_only=False)
            net = build_network(arch, init["counts"])
            net.load_state_dict(init["state"])
            result = _train_and_measure(net, arch, init["counts"], train_ds, val_ds,
                                        dataclasses.replace(recipe, seed=seed), folders[mode])
            result.update({"network": "lw-dna", "score": mode, "seed": seed, "threshold": init["threshold"],
                           "search_ratio": init["ratio"], "reached": init["reached"], "message": init["message"],
                           "trace": init["trace"], "search_loss": init["search_loss"]})
            if _rank() == 0:
                atomic_save(result, folders[mode] / "result.pt")
            results[mode] = result
    return [results[m] for m in modes]


@dataclasses.dataclass
class Experiment:
    """Everything a run produced: one row per trained network, and the architectures."""

    runs: pd.DataFrame           # network, score, seed, val_acc, flops, flops_analytic, params, ...
    details: list[dict]          # full results (channels, search trace, history)
    baseline_arch: Arch
    widened_arch: Arch
    config: HeteroConfig


def run(cfg: HeteroConfig, recipe: TrainConfig, train_ds, val_ds, data_id: dict, seeds: Iterable[int],
        modes: Sequence[str] = SCORES, progress: bool = True) -> Experiment:
    """Baseline and LW-DNA (each scoring mode) for every seed, trained with the same recipe."""
    modes = [modes] if isinstance(modes, str) else list(modes)
    require(len(modes) > 0, "score", "give at least one scoring mode")
    for m in modes:
        require(m in SCORES, "score", f"must be among {', '.join(SCORES)}, got {m!r}")
    seeds = list(seeds)
    require(len(seeds) > 0, "seeds", "give at least one seed")
    details = []
    for seed in tqdm(seeds, desc="seeds", disable=not progress):
        details.append(run_baseline(cfg, recipe, train_ds, val_ds, data_id, seed))
        details.extend(run_lwdna(cfg, recipe, train_ds, val_ds, data_id, seed, modes, progress))
    cols = ["network", "score", "seed", "val_acc", "train_acc", "flops", "flops_analytic", "params",
            "params_analytic", "search_ratio", "reached"]
    runs = pd.DataFrame([{c: d.get(c) for c in cols} for d in details])
    return Experiment(runs, details, arch_for(cfg, False), arch_for(cfg, True), cfg)


# ----------------------------------------------------------------------------- tables and verdict
def complexity_table(exp: Experiment) -> pd.DataFrame:
    """FLOPs and params of baseline, widened and each LW-DNA (seed-mean), flop_counter vs analytic."""
    rows = []
    for name, arch in (("baseline", exp.baseline_arch), ("widened", exp.widened_arch)):
        net = build_network(arch)
        rows.append({"network": name, "score": "-", "MFLOPs": stats.count_flops(net, (1, 3, arch.input_size, arch.input_size)) / 1e6,
                     "MFLOPs_analytic": analytic_flops(arch) / 1e6, "params_k": stats.count_params(net) / 1e3,
                     "params_k_analytic": analytic_params(arch) / 1e3})
        del net
    lw = exp.runs[exp.runs["network"] == "lw-dna"]
    for mode, g in lw.groupby("score", sort=False):
        rows.append({"network": "lw-dna", "score": mode, "MFLOPs": g["flops"].mean() / 1e6,
                     "MFLOPs_analytic": g["flops_analytic"].mean() / 1e6, "params_k": g["params"].mean() / 1e3,
                     "params_k_analytic": g["params_analytic"].mean() / 1e3})
    df = pd.DataFrame(rows)
    widened = df.loc[df["network"] == "widened", "MFLOPs"].iloc[0]
    base = df.loc[df["network"] == "baseline", "MFLOPs"].iloc[0]
    df["ratio_to_widened"] = df["MFLOPs"] / widened
    df["ratio_to_baseline"] = df["MFLOPs"] / base
    return df


def accuracy_table(exp: Experiment) -> pd.DataFrame:
    """Validation accuracy (%) mean and std over seeds, FLOPs and params, per network and scoring mode."""
    r = exp.runs.copy()
    r["acc"] = 100 * r["val_acc"]
    g = r.groupby(["network", "score"], sort=False)
    out = g.agg(acc_mean=("acc", "mean"), acc_std=("acc", "std"), n_seeds=("seed", "count"),
                MFLOPs=("flops", "mean"), params_k=("params", "mean")).reset_index()
    out["MFLOPs"] /= 1e6
    out["params_k"] /= 1e3
    out["acc_std"] = out["acc_std"].fillna(0.0)
    return out


def channel_table(exp: Experiment, seed: int | None = None) -> pd.DataFrame:
    """Per conv layer: output channels of baseline, widened and each LW-DNA (of one seed)."""
    base = layer_channels(exp.baseline_arch).rename(columns={"out_channels": "baseline"})
    wide = layer_channels(exp.widened_arch)["out_channels"]
    base["widened"] = wide.values
    seed = exp.runs["seed"].min() if seed is None else seed
    for d in exp.details:
        if d["network"] == "lw-dna" and d["seed"] == seed:
            base[f"lw-dna ({d['score']})"] = layer_channels(exp.widened_arch, d["channels"])["out_channels"].values
    return base


def search_traces(exp: Experiment, seed: int | None = None) -> pd.DataFrame:
    """The binary-search trace (threshold, step, FLOPs ratio per iteration) of each scoring mode."""
    seed = exp.runs["seed"].min() if seed is None else seed
    frames = [pd.DataFrame(d["trace"]).assign(score=d["score"]) for d in exp.details
              if d["network"] == "lw-dna" and d["seed"] == seed]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def search_report(exp: Experiment) -> str:
    """Markdown: for each scoring mode and seed, whether the binary search reached the FLOPs target."""
    lines = [f"- {d['score']}, seed {d['seed']}: {d['message']} (threshold {d['threshold']:.4g})"
             for d in exp.details if d["network"] == "lw-dna"]
    return "Binary search on the global threshold (target FLOPs ratio " \
           f"{exp.config.ratio} of the widened net):\n" + "\n".join(lines)


def verdict(acc: pd.DataFrame) -> tuple[dict[str, bool], str]:
    """Did the LW-DNA beat the regular baseline at lower FLOPs, per scoring mode? (held, Markdown text)"""
    base = acc[acc["network"] == "baseline"].iloc[0]
    held, lines = {}, []
    for _, row in acc[acc["network"] == "lw-dna"].iterrows():
        diff = row["acc_mean"] - base["acc_mean"]
        noise = math.sqrt(row["acc_std"] ** 2 + base["acc_std"] ** 2)
        fewer = row["MFLOPs"] < base["MFLOPs"]
        ok = bool(diff > 0 and fewer)
        held[row["score"]] = ok
        if row["n_seeds"] < 2 or base["n_seeds"] < 2:
            spread = "one seed: no spread estimate"
        else:
            spread = f"{'larger than' if abs(diff) > noise else 'within'} the seed spread {noise:.2f}"
        lines.append(f"- **{row['score']}**: LW-DNA {row['acc_mean']:.2f} ± {row['acc_std']:.2f}% at "
                     f"{row['MFLOPs']:.2f} MFLOPs vs baseline {base['acc_mean']:.2f} ± {base['acc_std']:.2f}% at "
                     f"{base['MFLOPs']:.2f} MFLOPs: difference {diff:+.2f} points ({spread}); FLOPs {'lower' if fewer else 'NOT lower'} -> hypothesis "
                     f"**{'held' if ok else 'did not hold'}**.")
    return held, "\n".join(lines)


# ----------------------------------------------------------------------------- plots
def plot_channels(table: pd.DataFrame):
    """Bar chart of output channels per conv layer: baseline, widened and LW-DNA(s)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    long = table.drop(columns=["vector"]).melt(id_vars="layer", var_name="network", value_name="channels")
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(table)), 4))
    sns.barplot(data=long, x="layer", y="channels", hue="network", ax=ax)
    ax.set_xlabel("convolution (in forward order)")
    ax.set_ylabel("output channels")
    ax.set_title("Per-layer channels: baseline, widened, LW-DNA")
    ax.tick_params(axis="x", rotation=90, labelsize=7)
    fig.tight_layout()
    return fig


def plot_trace(trace: pd.DataFrame, target: float, tolerance: float):
    """FLOPs ratio and threshold per binary-search iteration, per scoring mode."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    sns.lineplot(data=trace, x="iteration", y="flops_ratio", hue="score", marker="o", ax=axes[0])
    axes[0].axhspan(target - tolerance, target + tolerance, color="grey", alpha=0.3, label="target ± tol")
    axes[0].set_ylabel("FLOPs(kept) / FLOPs(widened)")
    axes[0].set_title("Binary search: FLOPs ratio")
    sns.lineplot(data=trace, x="iteration", y="threshold", hue="score", marker="o", ax=axes[1])
    axes[1].set_yscale("symlog", linthresh=1e-4)
    axes[1].set_ylabel("global threshold (symlog)")
    axes[1].set_title("Binary search: threshold")
    for ax in axes:
        ax.set_xlabel("iteration")
    fig.tight_layout()
    return fig


def plot_accuracy_flops(exp: Experiment, acc: pd.DataFrame):
    """Validation accuracy vs MFLOPs: every seed (points) and the seed mean ± std (error bars)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    r = exp.runs.copy()
    r["label"] = np.where(r["network"] == "baseline", "baseline", "lw-dna (" + r["score"].astype(str) + ")")
    r["acc"], r["MFLOPs"] = 100 * r["val_acc"], r["flops"] / 1e6
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    sns.scatterplot(data=r, x="MFLOPs", y="acc", hue="label", style="label", s=60, alpha=0.6, ax=ax)
    for _, row in acc.iterrows():
        ax.errorbar(row["MFLOPs"], row["acc_mean"], yerr=row["acc_std"], fmt="k_", capsize=4, markersize=14)
    ax.set_xlabel(f"MFLOPs per image ({FLOPS_NOTE})")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Accuracy vs FLOPs (points: seeds; bars: mean ± std)")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- command line (torchrun)
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m netanatomy.hetero -f params/heterogeneity.X.yaml` (or under `torchrun`): the notebook's
    experiment without the notebook, e.g. for the ImageNet set on several GPUs."""
    import yaml

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("-f", "--params", required=True, help="a params/heterogeneity*.yaml file")
    args = ap.parse_args(argv)
    from .params import with_defaults

    p = with_defaults("heterogeneity", yaml.safe_load(Path(args.params).read_text()) or {})
    train_ds, val_ds, classes, size = load_data(p["dataset"], p["data_root"], p["scale"], p["image_size"], p["progress"])
    cfg, recipe, seeds = configs_from_params(p, len(classes), size)
    exp = run(cfg, recipe, train_ds, val_ds, data_key(p["dataset"], p["data_root"], p["scale"], size), seeds,
              p["score"], p["progress"])
    if _rank() == 0:
        acc = accuracy_table(exp)
        print(acc.to_string(index=False))
        print(verdict(acc)[1])
    return 0


def configs_from_params(p: dict, num_classes: int, input_size: int) -> tuple[HeteroConfig, TrainConfig, list[int]]:
    """HeteroConfig, TrainConfig and the seed list from the notebook's parameters (all of them: the
    notebook's `P`, or `params.with_defaults`)."""
    modes = p["score"]
    first = modes if isinstance(modes, str) else (modes[0] if modes else "magnitude")
    n_seeds = p["seeds"]
    require(isinstance(n_seeds, int) and n_seeds >= 1, "seeds", f"must be an integer >= 1 (number of seeds), got {n_seeds!r}")
    cfg = HeteroConfig(model=p["model"], depth=p["depth"], width_mult=p["width_mult"], ratio=p["ratio"],
                       remain_percentage=p["remain_percentage"], linear_percentage=p["linear_percentage"], score=first,
                       search_batches=p["search_batches"], search_lr=p["lr"], search_batch_size=p["search_batch_size"],
                       embedding_dim=p["embedding_dim"], num_classes=num_classes, input_size=input_size)
    recipe = TrainConfig(epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], optimizer="sgd", momentum=0.9,
                         weight_decay=p["weight_decay"], schedule="cosine", seed=p["seed"], device=p["device"],
                         num_workers=p["num_workers"], progress=p["progress"])
    seeds = [p["seed"] + i for i in range(n_seeds)]
    return cfg, recipe, seeds


if __name__ == "__main__":
    sys.exit(main())
