"""Model builders, checkpoint loading and named layer presets.

`build(name, num_classes)` covers torchvision `vgg16`, `resnet18`, `resnet50`, `densenet121`,
`alexnet`; the ImageNet DARTS network `darts` (`netanatomy.darts`); the CIFAR ResNets
`resnet20/32/44/56` in the common (akamaster) layout whose published checkpoints load unchanged;
and the small concept-world nets `small_vgg` and `small_resnet`.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from .darts import NetworkImageNet
from .errors import DataError, ParamError
from .hooks import get_module
from .runtime import resolve_path


# ----------------------------------------------------------------------------- CIFAR ResNets
class CifarBasicBlock(nn.Module):
    """Two 3x3 convs with BN; option-A (zero-pad, stride-2 subsample) or option-B (1x1 conv) shortcut."""

    def __init__(self, in_planes: int, mid_planes: int, out_planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(mid_planes, out_planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            if shortcut == "A":
                if out_planes < in_planes:
                    raise ParamError("shortcut", "option A cannot reduce channels; use shortcut='B'")
                self.shortcut = _PadShortcut(stride, out_planes - in_planes)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False),
                                              nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample by `stride` and zero-pad channels equally on both sides."""

    def __init__(self, stride: int, pad: int):
        super().__init__()
        self.stride, self.pad = stride, pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class CifarResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016, sec. 4.2): 3 stages of n blocks, 16/32/64 channels by default.

    `stage_channels` sets each stage's residual width; `block_channels` (one per block) sets each
    block's inner width, so layer-wise differentiated networks (Heterogeneity Hypothesis) use it too.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, width_mult: float = 1.0,
                 stage_channels: Sequence[int] | None = None, block_channels: Sequence[int] | None = None,
                 stem_channels: int | None = None, shortcut: str = "A"):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ParamError("depth", f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, ...), got {depth}")
        n = (depth - 2) // 6
        stages = list(stage_channels or [max(1, round(c * width_mult)) for c in (16, 32, 64)])
        inner = list(block_channels or [stages[s] for s in range(3) for _ in range(n)])
        if len(inner) != 3 * n:
            raise ParamError("block_channels", f"needs {3 * n} entries for depth {depth}, got {len(inner)}")
        stem = stem_channels or stages[0]
        self.depth, self.blocks_per_stage = depth, n
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()                       # a module, so NAD can gate the stem's output after its ReLU
        in_planes = stem
        for s in range(3):
            blocks = []
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(CifarBasicBlock(in_planes, inner[s * n + b], stages[s], stride, shortcut))
                in_planes = stages[s]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(self.pool(out), 1))


# ----------------------------------------------------------------------------- small concept-world nets
def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallVGG(nn.Module):
    """Plain VGG-style net for the concept world: conv1@full, conv2@1/2, conv3-4@1/4, conv5-6@1/8, GAP, fc."""

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, widths: Sequence[int] = (16, 32, 64, 128)):
        super().__init__()
        w = [max(1, round(c * width_mult)) for c in widths]
        self.features = nn.Sequential(OrderedDict([
            ("conv1", _conv_bn_relu(3, w[0])), ("pool1", nn.MaxPool2d(2)),
            ("conv2", _conv_bn_relu(w[0], w[1])), ("pool2", nn.MaxPool2d(2)),
            ("conv3", _conv_bn_relu(w[1], w[2])), ("conv4", _conv_bn_relu(w[2], w[2])), ("pool3", nn.MaxPool2d(2)),
            ("conv5", _conv_bn_relu(w[2], w[3])), ("conv6", _conv_bn_relu(w[3], w[3])),
        ]))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class SmallResNet(nn.Module):
    """Residual counterpart of SmallVGG: a stem, then three stride-2 stages of basic blocks, GAP, fc."""

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, widths: Sequence[int] = (16, 32, 64, 128),
                 blocks: Sequence[int] = (1, 1, 1)):
        super().__init__()
        w = [max(1, round(c * width_mult)) for c in widths]
        self.stem = _conv_bn_relu(3, w[0])
        in_planes = w[0]
        for s, n in enumerate(blocks):
            layer = []
            for b in range(n):
                layer.append(CifarBasicBlock(in_planes, w[s + 1], w[s + 1], 2 if b == 0 else 1, shortcut="B"))
                in_planes = w[s + 1]
            setattr(self, f"layer{s + 1}", nn.Sequential(*layer))
        self.num_stages = len(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for s in range(self.num_stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.fc(torch.flatten(self.pool(x), 1))


# ----------------------------------------------------------------------------- registry
_TORCHVISION = ("vgg16", "resnet18", "resnet50", "densenet121", "alexnet")
_CIFAR = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56}
_SMALL = {"small_vgg": SmallVGG, "small_resnet": SmallResNet}
MODEL_NAMES = tuple(_SMALL) + tuple(_CIFAR) + _TORCHVISION + ("darts",)

# Named layer lists per architecture. "nad": the gated layers of NAD, where upstream's Mask modules sit
# (hujiecpp/NAD models/imagenet/*.py); "dissect": layers probed by Network Dissection by default;
# "last": the last convolutional stage (DKA's dissection target).
PRESETS: dict[str, dict[str, list[str]]] = {
    # NAD (upstream cfg 'D'): a stage's last conv is gated after its max-pool; conv5_3 after pool5 and
    # the 7x7 average pool (features.4, .9, .16, .23 and avgpool are the pooled outputs)
    "vgg16": {
        "nad": [f"features.{i}" for i in (1, 4, 6, 9, 11, 13, 16, 18, 20, 23, 25, 27)] + ["avgpool"],
        "dissect": ["features.29"], "last": ["features.29"],
    },
    "resnet18": {"nad": ["maxpool"] + [f"layer{s}.{b}" for s in (1, 2, 3, 4) for b in (0, 1)],
                 "dissect": ["layer3", "layer4"], "last": ["layer4"]},
    "resnet50": {
        "nad": ["maxpool"] + [f"layer{s}.{b}" for s, n in ((1, 3), (2, 4), (3, 6), (4, 3)) for b in range(n)],
        "dissect": ["layer3", "layer4"], "last": ["layer4"],
    },
    # NAD: the last gate after norm5 + ReLU (`build` adds that ReLU as features.relu5, as upstream has it)
    "densenet121": {
        "nad": ["features.pool0", "features.denseblock1", "features.transition1", "features.denseblock2",
                "features.transition2", "features.denseblock3", "features.transition3", "features.relu5"],
        "dissect": ["features.norm5"], "last": ["features.norm5"],
    },
    "alexnet": {"nad": [f"features.{i}" for i in (1, 4, 7, 9, 11)], "dissect": ["features.11"],
                "last": ["features.11"]},
    "small_vgg": {"nad": [f"features.conv{i}" for i in range(1, 7)],
                  "dissect": ["features.conv4", "features.conv6"], "last": ["features.conv6"]},
    "small_resnet": {"nad": ["stem", "layer1", "layer2", "layer3"], "dissect": ["layer2", "layer3"],
                     "last": ["layer3"]},
    # NAD: stem0, stem1 and every cell's concatenated output (upstream mask0, mask1, cells[i].mask)
    "darts": {"nad": ["stem0", "stem1"] + [f"cells.{i}" for i in range(14)], "dissect": ["cells.13"],
              "last": ["cells.13"]},
}
for _name, _depth in _CIFAR.items():
    _n = (_depth - 2) // 6
    # NAD: after the stem's ReLU and after every residual block (upstream's ResNet-50 layout: after the
    # stem's max-pool and after each bottleneck)
    PRESETS[_name] = {"nad": ["relu"] + [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(_n)],
                      "dissect": ["layer2", "layer3"], "last": ["layer3"]}


def build(name: str, num_classes: int, width_mult: float = 1.0, weights: str | Path | None = None,
          **kwargs) -> nn.Module:
    """Build model `name` with `num_classes` outputs (randomly initialised unless `weights` is given)."""
    if name not in MODEL_NAMES:
        raise ParamError("model", f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ParamError("num_classes", f"must be a positive integer, got {num_classes!r}")
    if width_mult <= 0:
        raise ParamError("width_mult", f"must be positive, got {width_mult}")
    if name in _SMALL:
        model = _SMALL[name](num_classes=num_classes, width_mult=width_mult, **kwargs)
    elif name in _CIFAR:
        model = CifarResNet(_CIFAR[name], num_classes=num_classes, width_mult=width_mult, **kwargs)
    elif width_mult != 1.0:
        raise ParamError("width_mult", f"{name} has a fixed width; width_mult must be 1")
    elif name == "darts":
        model = NetworkImageNet(num_classes=num_classes, **kwargs)
    else:
        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes, **kwargs)
        if name == "densenet121":
            # torchvision applies the final ReLU in forward(); as a module it can be hooked (a second ReLU
            # there changes nothing; not in place, so what a hook read at norm5 stays unrectified)
            model.features.add_module("relu5", nn.ReLU(inplace=False))
    if weights is not None:
        load_weights(model, weights)
    return model


def extract_state_dict(obj) -> Mapping[str, torch.Tensor]:
    """The state dict inside a checkpoint object (a module, a raw state dict, or a dict holding one)."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if key in obj and isinstance(obj[key], Mapping):
                return obj[key]
        return obj
    raise DataError("weights", f"holds a {type(obj).__name__}, not a state dict", "a state dict or a dict holding one")


def read_checkpoint(path: str | Path, trusted: bool = False):
    """torch.load a checkpoint on CPU; `trusted=True` allows pickled Python objects (own files only)."""
    path = resolve_path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found", "a .pth/.pt/.th file saved with torch.save")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for unreadable files
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "no message"
        raise DataError(path, f"cannot be read as a torch checkpoint ({type(exc).__name__}: {first}); "
                              "the file is damaged or not a checkpoint") from None


def load_weights(model: nn.Module, source, strict: bool = True, trusted: bool = False,
                 rename: Mapping[str, str] | None = None, where: str | None = None) -> nn.Module:
    """Load a checkpoint (path, raw state dict, or dict holding one under state_dict/model_state_dict).

    Strips `module.` prefixes (DataParallel/DDP), renames key prefixes by `rename` (old -> new), and
    on any mismatch raises DataError (naming `where`, default the path) listing missing keys, unexpected keys and shape conflicts.
    BatchNorm `num_batches_tracked` buffers that old checkpoints lack are set to 0 (they do not
    affect evaluation; torch's own loader accepts such files too).
    """
    where = where or (str(source) if isinstance(source, (str, Path)) else "state dict")
    obj = read_checkpoint(source, trusted) if isinstance(source, (str, Path)) else source
    state = {}
    for key, value in extract_state_dict(obj).items():
        key = key[len("module."):] if key.startswith("module.") else key
        for old, new in (rename or {}).items():
            if key.startswith(old):
                key = new + key[len(old):]
        state[key] = value
    own = model.state_dict()
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape]
    if shapes or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
        if shapes:
            parts.append(f"shape mismatches: {'; '.join(shapes[:10])}")
        raise DataError(where, f"does not fit {type(model).__name__}: " + " | ".join(parts))
    model.load_state_dict(state, strict=strict)
    return model


def layers(model_name: str, preset: str = "nad") -> list[str]:
    """The named layer list `preset` ('nad', 'dissect', 'last') of architecture `model_name`."""
    if model_name not in PRESETS:
        raise ParamError("model", f"no layer presets for {model_name!r}; known: {', '.join(PRESETS)}")
    if preset not in PRESETS[model_name]:
        raise ParamError("layers", f"unknown preset {preset!r} for {model_name}; known: {', '.join(PRESETS[model_name])}")
    return list(PRESETS[model_name][preset])


def resolve_layers(model: nn.Module, model_name: str, spec: str | Sequence[str]) -> list[str]:
    """A preset name or a list of layer names, checked against the model (clear error lists valid ones)."""
    names = layers(model_name, spec) if isinstance(spec, str) else list(spec)
    if not names:
        raise ParamError("layers", "no layers given")
    for name in names:
        get_module(model, name)
    return names


def head(model: nn.Module) -> tuple[str, nn.Linear]:
    """Name and module of the final classification layer (the last nn.Linear, or a routed replacement)."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or getattr(module, "is_head", False):
            found = (name, module)
    if found is None:
        raise ParamError("model", f"{type(model).__name__} has no final linear layer")
    return found


def set_head(model: nn.Module, module: nn.Module) -> nn.Module:
    """Replace the final classification layer in place by `module`; returns the model."""
    name, _ = head(model)
    parent_name, _, attr = name.rpartition(".")
    parent = get_module(model, parent_name) if parent_name else model
    setattr(parent, attr, module)
    return model


def pooled_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features entering the head, logits) for a batch: for ResNets the globally pooled trunk output."""
    name, module = head(model)
    box = {}
    handle = module.register_forward_hook(lambda _m, inputs, _out: box.__setitem__("f", inputs[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return box["f"], logits
