"""The Heterogeneity Hypothesis (Li et al., CVPR 2021): widen, shrink to a FLOPs budget, train the LW-DNA.

The method, as the upstream code (ofsoundof/Heterogeneity_Hypothesis, `main_hh_grad.py`) does it:

1. **Widen** a ResNet by `width_mult` (every channel count; about `width_mult**2` times the FLOPs).
2. Replace each convolution by a **hypernetwork convolution** (DHP): the layer owns no kernel; the
   kernel is generated from the outer product of the input latent vector `z_in` (owned by the layer
   that writes the input) and the layer's output latent vector `z_out`, through per-layer
   embeddings of dimension E (`embedding_dim`):

       kernel[o, i] = W2[i, o] @ ((z_in[i] z_out[o] + b0[i, o]) W1[i, o] + b1[i, o]) + b2[i, o]

   with W1 ~ U(+-sqrt(3)), W2 ~ U(+-sqrt(3 / (E C_in k^2))) (hyperfan-in), biases zero. One latent
   vector per stage is shared by every convolution that writes the residual stream (the last conv
   of each block and the downsample; on CIFAR ResNets also the stem), so residual additions stay
   aligned.
3. **Search**: a few batches of SGD on the hypernetwork model (upstream: 2 batches), then a score
   per channel: the latent vector's magnitude |z| (upstream, ResNets), its gradient |dL/dz|, or
   U(0, 1) (an ablation upstream cannot run).
4. **Shrink**: a binary search on one global threshold t so that FLOPs(kept) / FLOPs(widened)
   reaches `ratio`. Vector v keeps channel i when score_i >= min(t, k_v-th largest score of v),
   k_v = floor(len(v) * remain_percentage) (at least 1), floor(len * linear_percentage) for the
   last stage's vector (the classifier input); the input is never pruned.
5. **Materialise** the kept kernels, BatchNorm entries and classifier columns into an ordinary
   network (`models.CifarResNet` or a torchvision ResNet with per-layer widths), to be trained with
   the baseline's recipe.

Networks as channel configurations (the latent vectors, FLOPs under upstream's and torch's conventions,
parameters, the ordinary network of a configuration) live in `hetero.networks`.
"""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .. import hooks, models
from ..config import check_fields, choice, integer, number, optional, param
from ..errors import ParamError
from ..runtime import pick_device
from .networks import MODELS, SEARCH_CONVENTIONS, Arch, ConvSpec, analytic_flops, analytic_params, architecture, \
    build_network, check_layout

SCORES = ("magnitude", "gradient", "random")


# ----------------------------------------------------------------------------- settings
@dataclasses.dataclass
class HeteroConfig:
    """Architecture and search settings (upstream defaults where they exist); every field is checked."""

    model: str = param("cifar_resnet", choice(*MODELS), "cifar_resnet (depth 6n+2) or imagenet_resnet (50/101/152)")
    depth: int = param(20, integer(8), "network depth")
    width_mult: float = param(2.0, number(1), "widen every channel count by this factor, then shrink")
    ratio: float = param(0.23, number(0, 1, lo_open=True), "target FLOPs(LW-DNA) / FLOPs(widened)")
    flops_convention: str = param("hh", choice(*SEARCH_CONVENTIONS),
                                  "how the search counts FLOPs: hh (upstream: conv and linear) or dhp (+ BatchNorm)")
    remain_percentage: float = param(0.4, number(0, 1), "every latent vector keeps at least floor(len * this)")
    linear_percentage: float = param(0.45, number(0, 1), "the classifier's input keeps at least floor(len * this)")
    search_batches: int = param(2, integer(1), "SGD batches on the hypernetwork model before scoring (upstream: 2)")
    search_lr: float = param(0.1, number(0, lo_open=True), "learning rate of the search phase")
    search_batch_size: int | None = param(None, optional(integer(1)), "search batch size (None: training's)")
    embedding_dim: int = param(2, integer(1), "hypernetwork embedding dimension E")
    prune_threshold: float = param(5e-3, number(0), "binary search: start threshold (upstream util/option_dhp.py)")
    step: float = param(0.01, number(0, lo_open=True), "binary search: start step (upstream main_hh_grad.py)")
    tolerance: float = param(1e-3, number(0, lo_open=True),
                             "binary search: |FLOPs ratio - ratio| that is reached (upstream main_hh_grad.py)")
    max_iter: int = param(100, integer(1), "binary search: at most this many steps (upstream main_hh_grad.py)")
    num_classes: int = param(10, integer(1), "classifier outputs")
    input_size: int = param(32, integer(8), "input height and width (pixels)")

    def __post_init__(self) -> None:
        check_fields(self)
        check_layout(self.model, self.depth)


def arch_for(cfg: HeteroConfig, widened: bool = True) -> Arch:
    """The widened (or, with widened=False, the width-1 baseline) architecture of a configuration."""
    return architecture(cfg.model, cfg.depth, cfg.width_mult if widened else 1.0, cfg.num_classes, cfg.input_size)


# ----------------------------------------------------------------------------- hypernetwork model (DHP)
class HyperConv(nn.Module):
    """A convolution whose kernel is generated from (z_in, z_out) by a per-layer hypernetwork (the module
    docstring's formula; W1 (C_in, C_out, E), W2 (C_in, C_out, k^2, E)), then BN (+ReLU); upstream `conv_dhp`."""

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

    Leaves each latent vector's gradient of the last batch in `hyper.last_grads` (the 'gradient'
    score). Returns the per-batch loss.
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
    if mode not in SCORES:
        raise ParamError("score", f"must be one of {', '.join(SCORES)}, got {mode!r}")
    if mode == "magnitude":
        return {k: v.detach().abs().cpu() for k, v in hyper.latents.items()}
    if mode == "gradient":
        grads = getattr(hyper, "last_grads", None)
        if not grads:
            raise ParamError("score", "'gradient' needs the search phase to run first (no latent gradients)")
        return {k: grads[k].abs().cpu() if k in grads else torch.zeros(len(v)) for k, v in hyper.latents.items()}
    gen = torch.Generator().manual_seed(10_007 * seed + 17)
    return {k: torch.rand(len(v), generator=gen) for k, v in hyper.latents.items()}


def floors(arch: Arch, remain_percentage: float, linear_percentage: float) -> dict[str, int]:
    """Minimum kept channels per vector: all of the input, floor(len * linear) of the last stage, floor(len * remain)
    of the others."""
    return {name: n if name == "input" else
            min(n, max(1, int(n * (linear_percentage if name == arch.last else remain_percentage))))
            for name, n in arch.vectors.items()}


def masks_at(scores: dict[str, torch.Tensor], floor: dict[str, int], threshold: float) -> dict[str, torch.Tensor]:
    """Keep channel i of vector v when score >= min(threshold, k-th largest score of v), k = floor[v] (upstream's
    rule, model_dhp/resnet_imagenet_dhp.py mask())."""
    return {name: torch.ones(len(s), dtype=torch.bool) if name == "input" else
            s >= min(threshold, s.topk(floor[name]).values[-1].item()) for name, s in scores.items()}


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


class _Ratios:
    """FLOPs (under `convention`) and parameter ratios (kept / widened) of the configuration a threshold keeps."""

    def __init__(self, arch: Arch, scores: dict[str, torch.Tensor], floor: dict[str, int], convention: str):
        self.arch, self.scores, self.floor, self.convention = arch, scores, floor, convention
        self.flops, self.params = analytic_flops(arch, convention=convention), analytic_params(arch)

    def flops_ratio(self, counts: dict[str, int]) -> float:
        return analytic_flops(self.arch, counts, self.convention) / self.flops

    def row(self, iteration: int, threshold: float, step: float, phase: str) -> dict:
        """A trace row: iteration, threshold, step, flops_ratio, params_ratio, phase."""
        counts = counts_of(masks_at(self.scores, self.floor, threshold))
        return {"iteration": iteration, "threshold": threshold, "step": step,
                "flops_ratio": self.flops_ratio(counts),
                "params_ratio": analytic_params(self.arch, counts) / self.params, "phase": phase}


def _upstream_walk(ratios: _Ratios, cfg: HeteroConfig) -> list[dict]:
    """Upstream's walk from threshold `prune_threshold` with step `step`: the threshold moves up while the
    ratio is above the target, down while below; the step halves at each crossing; it stops within
    `tolerance`, after `max_iter` steps, or at ratio 0 (one step at least, so a target of 1 is tried too)."""
    target, tol = cfg.ratio, cfg.tolerance
    pt, step, status, counter = cfg.prune_threshold, cfg.step, 1.0, 1
    rows = []
    while counter == 1 or (abs(status - target) > tol and counter <= cfg.max_iter):
        status_old = status
        rows.append(ratios.row(counter, pt, step, "upstream"))
        status = rows[-1]["flops_ratio"]
        if abs(status - target) <= tol:
            break
        if counter > 1 and (status_old >= target) == (status < target):
            step /= 2
        pt = pt + step if status > target else max(pt - step, 0.0)
        counter += 1
        if status <= 0:
            break
    return rows


def _refine(ratios: _Ratios, target: float, start: int) -> list[dict]:
    """Exact search when upstream's walk missed the tolerance: the kept set only changes at score values, and
    the FLOPs ratio falls monotonically with the threshold, so bisect over the sorted distinct scores."""
    cands = [0.0] + torch.unique(torch.cat([s.float() for k, s in ratios.scores.items() if k != "input"])).tolist()
    rows, memo = [], {}

    def ratio_at(i: int) -> float:
        if i not in memo:
            rows.append(ratios.row(start + len(rows) + 1, cands[i], float("nan"), "refine"))
            memo[i] = rows[-1]["flops_ratio"]
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
    """Upstream's binary search on one global threshold so that FLOPs(kept)/FLOPs(widened) hits `cfg.ratio`
    (FLOPs counted under `cfg.flops_convention`).

    First upstream's walk (`_upstream_walk`, trace rows of phase 'upstream'). Where upstream would
    stop silently off target, an exact bisection over the threshold's breakpoints (the distinct
    scores) follows (phase 'refine'); if no threshold lands within tolerance, the closest
    configuration seen is returned with `reached=False` and a message saying why.
    """
    floor = floors(arch, cfg.remain_percentage, cfg.linear_percentage)
    ratios = _Ratios(arch, scores, floor, cfg.flops_convention)
    target, tol = cfg.ratio, cfg.tolerance
    rows = _upstream_walk(ratios, cfg)
    if abs(rows[-1]["flops_ratio"] - target) > tol:
        rows += _refine(ratios, target, len(rows))
    trace = pd.DataFrame(rows)
    err = (trace["flops_ratio"] - target).abs()
    best = trace.loc[err.idxmin()]
    reached = bool(err.min() <= tol)
    threshold = float(best["threshold"])
    masks = masks_at(scores, floor, threshold)
    counts = counts_of(masks)
    ratio = ratios.flops_ratio(counts)
    if reached:
        n_up = int((trace["phase"] == "upstream").sum())
        how = (f"in {n_up} upstream steps" if best["phase"] == "upstream" else
               f"after refinement (upstream's {n_up} steps ended at {trace['flops_ratio'].iloc[n_up - 1]:.4f})")
        message = (f"reached FLOPs ratio {ratio:.4f} (target {target}, tolerance {tol}, {cfg.flops_convention} FLOPs) "
                   f"{how}")
    else:
        floor_ratio = ratios.flops_ratio(floor)
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
    net = build_network(arch, counts_of(masks))
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
        for n in ("weight", "bias", "running_mean", "running_var"):
            state[f"{s.bn}.{n}"] = getattr(m.bn, n).detach().cpu().index_select(0, io).clone()
        state[f"{s.bn}.num_batches_tracked"] = m.bn.num_batches_tracked.detach().cpu().clone()
    state[f"{arch.head}.weight"] = hyper.fc.weight.detach().cpu().index_select(1, idx[arch.last]).clone()
    state[f"{arch.head}.bias"] = hyper.fc.bias.detach().cpu().clone()
    models.load_weights(net, state)
    return net
