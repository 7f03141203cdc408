"""Small data, settings, a searched hypernetwork and a brute-force oracle for the tests of
`netanatomy.hetero`.

- `tiny_data(n, size, classes, seed)`: N(0, 1) images whose label is
  ``[mean of channel 0 > 0] + 2 [mean of channel 1 > 0]`` (mod `classes`): learnable, seeded.
- `TensorData(ds)`: what `hetero.run.experiment` reads of a `subject.Data` (the same data set for
  training and validation, its classes, input size and cache key), for a `TensorDataset`.
- `CIFAR` / `IMNET`: method settings of a CIFAR ResNet-8 widened x2 (16 px, 4 classes) and of the
  ResNet-50 layout (32 px, 4 classes); `imnet_arch()` is that layout at 1/8 width so tests stay small.
- `searched(cfg, arch, seed)`: a hypernetwork model after the search phase on `tiny_data`, in eval mode.
- `closest_ratio(arch, scores, floor, target)`: by brute force over every breakpoint of the
  threshold (0 and each distinct score), the smallest |FLOPs ratio - target| any threshold reaches.
- `hand_arch()` / `hand_net()`: two networks whose FLOPs are counted by hand (`HAND_ARCH_FLOPS`,
  `HAND_NET_FLOPS`, per convention; the docstrings show the sums).
- `made_up_runs(diffs, flops)`: a runs table with baseline accuracies and, per scoring mode, the
  LW-DNA's accuracy difference (points) in each seed, for the verdict tests.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netanatomy.hetero import method as H
from netanatomy.hetero import networks as N

CIFAR = H.HeteroConfig(model="cifar_resnet", depth=8, width_mult=2.0, ratio=0.3, num_classes=4, input_size=16,
                       embedding_dim=2, search_lr=0.05)
IMNET = H.HeteroConfig(model="imagenet_resnet", depth=50, width_mult=1.0, ratio=0.3, num_classes=4, input_size=32,
                       embedding_dim=2, search_lr=0.05)


def imnet_arch() -> N.Arch:
    """The ResNet-50 layout at 1/8 width and 32 px (built directly: a width below 1)."""
    return N.architecture("imagenet_resnet", 50, 0.125, 4, 32)


def tiny_data(n: int = 48, size: int = 16, classes: int = 4, seed: int = 0) -> TensorDataset:
    """`n` seeded N(0, 1) images of `size` px labelled by the signs of their channel-0 and channel-1 means."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    return TensorDataset(x, y % classes)


class TensorData:
    """A `subject.Data` stand-in over one TensorDataset (used for training and validation alike)."""

    def __init__(self, ds: TensorDataset, name: str = "test"):
        self.train_aug = self.val = ds
        self.name = name
        self.classes = [str(c) for c in range(int(ds.tensors[1].max()) + 1)]
        self.input_size = int(ds.tensors[0].shape[-1])

    def key(self) -> dict:
        return {"dataset": self.name}


def searched(cfg: H.HeteroConfig, arch: N.Arch, seed: int = 0) -> H.HyperResNet:
    """A seeded hypernetwork model of `arch` after `H.search` on `tiny_data` (batch 16, CPU), in eval mode."""
    torch.manual_seed(seed)
    hyper = H.HyperResNet(arch, cfg.embedding_dim)
    H.search(hyper, tiny_data(size=cfg.input_size), cfg, batch_size=16, seed=seed, device="cpu", progress=False)
    return hyper.eval()


def closest_ratio(arch: N.Arch, scores: dict[str, torch.Tensor], floor: dict[str, int], target: float) -> float:
    """min over thresholds t in {0} + distinct scores of |FLOPs(kept at t) / FLOPs(widened) - target|."""
    cands = [0.0] + torch.unique(torch.cat([v for k, v in scores.items() if k != "input"])).tolist()
    full = N.analytic_flops(arch)
    return min(abs(N.analytic_flops(arch, H.counts_of(H.masks_at(scores, floor, t))) / full - target) for t in cands)


def hand_arch() -> N.Arch:
    """CIFAR ResNet-8 at width 1/16 (stages of 1, 2 and 4 channels), 4 px input, 2 classes.

    Multiply-adds (C_in C_out k^2 H W): stem 3*1*9*16 = 432; layer1.0 conv1 and conv2 1*1*9*16 = 144
    each; layer2.0 (2x2 output) conv1 1*2*9*4 = 72, conv2 2*2*9*4 = 144, shortcut 1*2*1*4 = 8;
    layer3.0 (1x1 output) conv1 2*4*9 = 72, conv2 4*4*9 = 144, shortcut 2*4 = 8; classifier 4*2 = 8.
    Sum 1,176. BatchNorm outputs (C H W): 16 + 16 + 16 + 8 + 8 + 8 + 4 + 4 + 4 = 84, at 2 each 168.
    """
    return N.architecture("cifar_resnet", 8, 1 / 16, 2, 4)


#: hh = 1,176 multiply-adds; dhp = 1,176 + 168; torch = 2 x 1,176.
HAND_ARCH_FLOPS = {"hh": 1176, "dhp": 1344, "torch": 2352}


def hand_net() -> nn.Module:
    """conv 3->4 (3x3, pad 1, no bias), BN(4), ReLU, depthwise conv 4->4 (3x3, groups 4), BN(4, not affine),
    ReLU, global average pool, linear 4->2; at 4 px.

    Multiply-adds: conv 3*4*9*16 = 1,728; depthwise 1*4*9*16 = 576; linear 4*2 = 8; sum 2,312.
    BatchNorm: 2 * 4*16 = 128 (affine) + 1 * 4*16 = 64 (not affine) = 192. ReLU and pooling: not counted.
    """
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4, affine=False),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


#: hh = 2,312; dhp = 2,312 + 192; torch (flop_counter) = 2 x 2,312.
HAND_NET_FLOPS = {"hh": 2312, "dhp": 2504, "torch": 4624}


def made_up_runs(diffs: dict[str, list[float]], flops: dict[str, float] | None = None,
                 base: tuple[float, ...] = (80.0, 81.0, 79.0, 82.0, 80.0)) -> pd.DataFrame:
    """Runs of seeds 0, 1, ...: the baseline at `base` % accuracy and 100 FLOPs; for each mode m an LW-DNA at
    base + diffs[m] (points; a shorter list drops the last seeds) and flops[m] FLOPs (default 90)."""
    rows = [{"network": "baseline", "score": "-", "seed": s, "val_acc": a / 100, "flops": 100.0}
            for s, a in enumerate(base)]
    for mode, d in diffs.items():
        rows += [{"network": "lw-dna", "score": mode, "seed": s, "val_acc": (base[s] + x) / 100,
                  "flops": (flops or {}).get(mode, 90.0)} for s, x in enumerate(d)]
    return pd.DataFrame(rows)
