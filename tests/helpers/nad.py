"""NAD test fixtures: a planted network whose per-class paths are known, a small random BN net, and
their data (already normalised images, as `netanatomy.nad.run.Images.of_tensors`)."""

from __future__ import annotations

import torch
from torch import nn

from netanatomy.nad import method, run

K, G, SIZE = 4, 4, 12     # classes, channels per class group, image size


class Planted(nn.Module):
    """Class c lights input channel c; channels G*c..G*c+G-1 of both gated layers ("r1", "r2") respond
    only to it (relu(x_c - 0.2)), and only they feed the logit of class c (weight 3). The path of
    class c is therefore exactly its group: `true_paths()`."""

    def __init__(self):
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(K, K * G, 1), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(K * G, K * G, 1), nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(K * G, K)
        with torch.no_grad():
            for p in self.parameters():
                p.zero_()
            self.c1.bias.fill_(-0.2)
            for j in range(K * G):
                self.c1.weight[j, j // G] = 1.0
                self.c2.weight[j, j] = 1.0
                self.fc.weight[j // G, j] = 3.0

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.r2(self.c2(self.r1(self.c1(x))))), 1))


def true_paths() -> method.PathResult:
    """The planted net's exact paths: class c keeps channels G*c..G*c+G-1 of "r1" and "r2"."""
    logits = {name: -torch.ones(K, K * G) for name in ("r1", "r2")}
    for name in logits:
        for c in range(K):
            logits[name][c, G * c:G * (c + 1)] = 1.0
    return method.PathResult(["r1", "r2"], list(range(K)), [str(c) for c in range(K)], logits, logits, None, {})


class Tiny(nn.Module):
    """A small random CNN with BN (eval mode) for the exact invariants; gated layers "b1" (8 channels)
    and "b2" (12 channels); `in_channels` inputs (K for the planted data, 3 for RGB images)."""

    def __init__(self, classes=K, seed=0, in_channels=K):
        super().__init__()
        torch.manual_seed(seed)
        self.b1 = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1, stride=2), nn.BatchNorm2d(12), nn.ReLU())
        self.fc = nn.Linear(12, classes)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.fc(self.b2(self.b1(x)).mean((2, 3)))


def planted_tensors(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n images per class (K, SIZE, SIZE): noise in [0, 0.1) plus 1 on the input channel of the class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(K).repeat_interleave(n)
    x = torch.rand(K * n, K, SIZE, SIZE, generator=g) * 0.1
    x[torch.arange(K * n), y] += 1.0
    return x, y


def planted_images(n: int = 12, seed: int = 0) -> run.Images:
    """`planted_tensors` as the images a search reads."""
    return run.Images.of_tensors(*planted_tensors(n, seed))


def search_config(**kw) -> method.SearchConfig:
    """A short search (beta 2, lr 0.3, 3 epochs, batches of 6, seed 0, no progress bars)."""
    base = dict(beta=2.0, lr=0.3, epochs=3, batch_size=6, path_epoch=None, progress=False, seed=0)
    base.update(kw)
    return method.SearchConfig(**base)
