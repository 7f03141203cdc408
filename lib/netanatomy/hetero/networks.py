"""The Heterogeneity Hypothesis's networks as channel configurations: the latent-vector description of
a (widened) ResNet, its FLOPs and parameters, and the ordinary network of a channel configuration.

An `Arch` lists the latent vectors (name -> full length; one per stage shared by every convolution
that writes the residual stream, one per inner width, and the 3-vector of the image) and the
convolutions reading and writing them; a channel configuration `counts` keeps some channels of each
vector.

FLOPs conventions (`FLOPS_CONVENTIONS`; the search target uses `HeteroConfig.flops_convention`):

    hh:    sum over convs C_in C_out k^2 H_out W_out + C_last num_classes
           (1 per multiply-add, no bias; what upstream's search counts: Heterogeneity_Hypothesis
           model_dhp/flops_counter_dhp.py `get_flops`, commit b7c0d13, called by main_hh_grad.py
           `binary_search`; its `is_supported_instance` has BatchNorm2d and ReLU commented out)
    dhp:   hh + sum over convs 2 C_out H_out W_out (every conv's BatchNorm, 2 per element when affine;
           ReLU not counted: the DHP code's counter, ofsoundof/dhp
           classification/model_dhp/flops_counter_dhp.py, commit da95b7e)
    torch: 2 x hh (convolutions and the classifier at 2 per multiply-add, as `torch.utils.flop_counter`
           counts them: the repository's tables)

`analytic_flops` computes each from a channel configuration; `count_flops_as` counts hh and dhp on
any built network with forward hooks, as upstream does, and `stats.count_flops` the torch
convention. Ratios under hh and torch are identical (the factor 2 cancels).
"""

from __future__ import annotations

import dataclasses

import torch
import torchvision
from torch import nn

from .. import hooks, models
from ..errors import ParamError

#: FLOPs conventions (the module docstring gives each formula and its upstream source).
FLOPS_CONVENTIONS = {
    "hh": "convolutions and classifier, 1 per multiply-add (upstream Heterogeneity_Hypothesis get_flops)",
    "dhp": "hh plus 2 per BatchNorm output element (upstream DHP get_flops)",
    "torch": "convolutions and classifier, 2 per multiply-add (torch.utils.flop_counter)",
}
#: The conventions the search target can use (torch gives the same ratios as hh).
SEARCH_CONVENTIONS = ("hh", "dhp")
IMAGENET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
MODELS = ("cifar_resnet", "imagenet_resnet")


def check_layout(model: str, depth: int) -> None:
    """A CIFAR ResNet has depth 6n+2; an ImageNet bottleneck ResNet 50, 101 or 152."""
    if model not in MODELS:
        raise ParamError("model", f"must be one of {', '.join(MODELS)}, got {model!r}")
    if model == "cifar_resnet" and not (isinstance(depth, int) and depth >= 8 and (depth - 2) % 6 == 0):
        raise ParamError("depth", f"a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, ...), got {depth!r}")
    if model == "imagenet_resnet" and depth not in IMAGENET_BLOCKS:
        raise ParamError("depth", f"an ImageNet bottleneck ResNet has depth {', '.join(map(str, IMAGENET_BLOCKS))}, "
                                  f"got {depth!r}")


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


def _out(h: int, k: int, s: int, p: int | None = None) -> int:
    p = k // 2 if p is None else p
    return (h + 2 * p - k) // s + 1


def architecture(model: str = "cifar_resnet", depth: int = 20, width_mult: float = 1.0, num_classes: int = 10,
                 input_size: int = 32) -> Arch:
    """The latent-vector description of a (widened) ResNet; the layout follows upstream resnet_dhp_share /
    resnet_imagenet_dhp and the module names follow `models.CifarResNet` / torchvision ResNet.
    (A width below 1 is allowed here, for small test networks.)"""
    check_layout(model, depth)
    if model == "cifar_resnet":
        return _cifar_architecture(depth, width_mult, num_classes, input_size)
    return _imagenet_architecture(depth, width_mult, num_classes, input_size)


def _cifar_architecture(depth: int, width_mult: float, num_classes: int, h: int) -> Arch:
    n = (depth - 2) // 6
    widths = [max(1, int(c * width_mult)) for c in (16, 32, 64)]
    vectors: dict[str, int] = {"input": 3, **{f"stage{s}": w for s, w in enumerate(widths, 1)}}
    convs = [ConvSpec("conv1", "conv1", "bn1", "input", "stage1", 3, 1, (h, h), True)]
    blocks: list[list[dict]] = []
    prev, size = "stage1", h
    for s in range(1, 4):
        stage = []
        for b in range(n):
            stride = 2 if (s > 1 and b == 0) else 1
            inner, out, p = f"layer{s}_{b}_1", f"stage{s}", f"layer{s}.{b}"
            vectors[inner] = widths[s - 1]
            ho = _out(size, 3, stride)
            c1 = ConvSpec(f"{p}.conv1", f"{p}.conv1", f"{p}.bn1", prev, inner, 3, stride, (ho, ho), True)
            c2 = ConvSpec(f"{p}.conv2", f"{p}.conv2", f"{p}.bn2", inner, out, 3, 1, (ho, ho), False)
            sc = None
            if stride != 1 or prev != out:
                sc = ConvSpec(f"{p}.shortcut", f"{p}.shortcut.0", f"{p}.shortcut.1", prev, out, 1, stride,
                              (ho, ho), False)
            convs += [c1, c2] + ([sc] if sc else [])
            stage.append({"conv1": c1, "conv2": c2, "shortcut": sc})
            prev, size = out, ho
        blocks.append(stage)
    return Arch("cifar_resnet", depth, width_mult, num_classes, h, vectors, "stage3", convs, blocks, "linear")


def _imagenet_architecture(depth: int, width_mult: float, num_classes: int, h: int) -> Arch:
    """A torchvision-style bottleneck ResNet (v1.5: stride on the 3x3 conv)."""
    planes = [max(1, int(c * width_mult)) for c in (64, 128, 256, 512)]
    vectors: dict[str, int] = {"input": 3, **{f"stage{s}": 4 * w for s, w in enumerate(planes, 1)}}
    vectors["stem"] = planes[0]
    h1 = _out(h, 7, 2, 3)
    convs = [ConvSpec("conv1", "conv1", "bn1", "input", "stem", 7, 2, (h1, h1), True)]
    blocks: list[list[dict]] = []
    size, prev = _out(h1, 3, 2, 1), "stem"   # after the max pool
    for s, nb in enumerate(IMAGENET_BLOCKS[depth], 1):
        stage = []
        for b in range(nb):
            stride = 2 if (s > 1 and b == 0) else 1
            i1, i2, out, p = f"layer{s}_{b}_1", f"layer{s}_{b}_2", f"stage{s}", f"layer{s}.{b}"
            vectors[i1] = vectors[i2] = planes[s - 1]
            ho = _out(size, 3, stride)
            c1 = ConvSpec(f"{p}.conv1", f"{p}.conv1", f"{p}.bn1", prev, i1, 1, 1, (size, size), True)
            c2 = ConvSpec(f"{p}.conv2", f"{p}.conv2", f"{p}.bn2", i1, i2, 3, stride, (ho, ho), True)
            c3 = ConvSpec(f"{p}.conv3", f"{p}.conv3", f"{p}.bn3", i2, out, 1, 1, (ho, ho), False)
            sc = None
            if b == 0:
                sc = ConvSpec(f"{p}.downsample", f"{p}.downsample.0", f"{p}.downsample.1", prev, out, 1,
                              stride, (ho, ho), False)
            convs += [c1, c2, c3] + ([sc] if sc else [])
            stage.append({"conv1": c1, "conv2": c2, "conv3": c3, "shortcut": sc})
            prev, size = out, ho
        blocks.append(stage)
    return Arch("imagenet_resnet", depth, width_mult, num_classes, h, vectors, "stage4", convs, blocks, "fc")


def analytic_flops(arch: Arch, counts: dict[str, int] | None = None, convention: str = "torch") -> int:
    """FLOPs of a channel configuration under `convention` (`FLOPS_CONVENTIONS`; the module docstring's formulas)."""
    if convention not in FLOPS_CONVENTIONS:
        raise ParamError("flops_convention", f"must be one of {', '.join(FLOPS_CONVENTIONS)}, got {convention!r}")
    c = counts or arch.vectors
    macs = sum(c[s.vin] * c[s.vout] * s.k * s.k * s.out_hw[0] * s.out_hw[1] for s in arch.convs)
    macs += c[arch.last] * arch.num_classes
    if convention == "torch":
        return int(2 * macs)
    if convention == "dhp":
        macs += sum(2 * c[s.vout] * s.out_hw[0] * s.out_hw[1] for s in arch.convs)
    return int(macs)


def count_flops_as(net: nn.Module, input_size: int, convention: str) -> int:
    """FLOPs of one forward pass of a built network at `input_size` px, counted module by module as upstream's
    `get_flops` does: Conv2d k^2 (C_in / groups) C_out H_out W_out and Linear in x out (1 per multiply-add, no
    bias); with `convention='dhp'` also 2 x the output elements of every affine BatchNorm2d (1 x when not
    affine). ReLU, pooling and additions are not counted (neither upstream counter counts them)."""
    if convention not in SEARCH_CONVENTIONS:
        raise ParamError("flops_convention", f"must be one of {', '.join(SEARCH_CONVENTIONS)}, got {convention!r}")
    total = [0]

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        per_position = output.shape[2:].numel() if output.dim() > 2 else 1
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total[0] += k * module.in_channels // module.groups * module.out_channels * per_position
        elif isinstance(module, nn.Linear):
            total[0] += module.in_features * module.out_features * output[..., 0].numel()
        elif convention == "dhp":
            total[0] += (2 if module.affine else 1) * module.num_features * per_position

    kinds = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, kinds)]
    was_training = net.training
    try:
        param = next(net.parameters())
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, input_size, input_size, device=param.device))
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    return int(total[0])


def analytic_params(arch: Arch, counts: dict[str, int] | None = None) -> int:
    """Parameters (conv kernels, BatchNorm weight and bias, classifier weight and bias) of a configuration."""
    c = counts or arch.vectors
    total = sum(c[s.vin] * c[s.vout] * s.k * s.k + 2 * c[s.vout] for s in arch.convs)
    return int(total + c[arch.last] * arch.num_classes + arch.num_classes)


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
