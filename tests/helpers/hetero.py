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
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from netanatomy.hetero import method as H

CIFAR = H.HeteroConfig(model="cifar_resnet", depth=8, width_mult=2.0, ratio=0.3, num_classes=4, input_size=16,
                       embedding_dim=2, search_lr=0.05)
IMNET = H.HeteroConfig(model="imagenet_resnet", depth=50, width_mult=1.0, ratio=0.3, num_classes=4, input_size=32,
                       embedding_dim=2, search_lr=0.05)


def imnet_arch() -> H.Arch:
    """The ResNet-50 layout at 1/8 width and 32 px (built directly: a width below 1)."""
    return H.architecture("imagenet_resnet", 50, 0.125, 4, 32)


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


def searched(cfg: H.HeteroConfig, arch: H.Arch, seed: int = 0) -> H.HyperResNet:
    """A seeded hypernetwork model of `arch` after `H.search` on `tiny_data` (batch 16, CPU), in eval mode."""
    torch.manual_seed(seed)
    hyper = H.HyperResNet(arch, cfg.embedding_dim)
    H.search(hyper, tiny_data(size=cfg.input_size), cfg, batch_size=16, seed=seed, device="cpu", progress=False)
    return hyper.eval()


def closest_ratio(arch: H.Arch, scores: dict[str, torch.Tensor], floor: dict[str, int], target: float) -> float:
    """min over thresholds t in {0} + distinct scores of |FLOPs(kept at t) / FLOPs(widened) - target|."""
    cands = [0.0] + torch.unique(torch.cat([v for k, v in scores.items() if k != "input"])).tolist()
    full = H.analytic_flops(arch)
    return min(abs(H.analytic_flops(arch, H.counts_of(H.masks_at(scores, floor, t))) / full - target) for t in cands)
