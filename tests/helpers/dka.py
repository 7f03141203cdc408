"""Dynamic-K activation: the upstream formula as an oracle, and a planted two-class task.

- `reference_topk_linear(x, W, b, K)` is upstream `RouteFcMaxAct.forward` with plain autograd:
  logit[b, c] = sum of the K largest x[b, i] * W[c, i] over i, plus b[c]. `TopKRouteLinear` must
  equal it in value and in the gradients of x, W and b (away from ties).
- `Planted(n, seed)`: 16 px noise images (std 0.3) with a bright 6 x 6 square (+2.0) in the top-left
  corner (class 0, "tl") or the bottom-right corner (class 1, "br"), classes alternating. A small
  net learns it to >= 90 % validation accuracy in four epochs.
- `PlantedData(n_train, n_val)`: the splits of `Planted` shaped like `netanatomy.subject.Data`
  (`train_aug`, `val`, `classes`, `key()`), for `dka.run.train_model`.
"""

from __future__ import annotations

import torch


def reference_topk_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int) -> torch.Tensor:
    """The upstream formula with plain autograd (the B x C x D votes are kept for backward)."""
    out = (x[:, None, :] * weight).topk(k, 2)[0].sum(2)
    return out + bias if bias is not None else out


class Planted(torch.utils.data.Dataset):
    """Two classes: a bright square in the top-left or bottom-right corner of a 16 px noise image."""

    classes = ("tl", "br")

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 2
        self.x = torch.randn(n, 3, 16, 16, generator=g) * 0.3
        for i in range(n):
            s = slice(0, 6) if self.y[i] == 0 else slice(10, 16)
            self.x[i, :, s, s] += 2.0
        lo, hi = self.x.min(), self.x.max()
        #: the images as uint8 (N, 16, 16, 3), what `netanatomy.data.raw_image` reads
        self.images = ((self.x - lo) / (hi - lo) * 255).permute(0, 2, 3, 1).to(torch.uint8).numpy()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


class PlantedData:
    """`Planted` splits with the interface of `netanatomy.subject.Data` that training uses."""

    def __init__(self, n_train: int, n_val: int):
        self.train_aug, self.val = Planted(n_train, 0), Planted(n_val, 1)
        self.sizes = (n_train, n_val)

    @property
    def classes(self) -> list[str]:
        return list(Planted.classes)

    @property
    def input_size(self) -> int:
        return 16

    def key(self) -> dict:
        return {"dataset": "planted", "sizes": list(self.sizes)}
