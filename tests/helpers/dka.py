"""Dynamic-K activation: the upstream formula as an oracle, and a planted two-class task.

- `reference_topk_linear(x, W, b, K)` is upstream `RouteFcMaxAct.forward` with plain autograd:
  logit[b, c] = sum of the K largest x[b, i] * W[c, i] over i, plus b[c]. `TopKRouteLinear` must
  equal it in value and in the gradients of x, W and b (away from ties).
- `Planted(n, seed)`: 16 px noise images (std 0.3) with a bright 6 x 6 square (+2.0) in the top-left
  corner (class 0, "tl") or the bottom-right corner (class 1, "br"), classes alternating. A small
  net learns it to >= 90 % validation accuracy in four epochs.
- `PlantedData(n_train, n_val)`: the splits of `Planted` shaped like `netanatomy.subject.Data`
  (`train_aug`, `val`, `classes`, `key()`), for `dka.run.train_model`.
- `seed_rows(dense, dka, measure)`: a per-seed table in the layout of `dka.run.seed_table` for
  planted values, and `T975` the Student t quantiles of a two-sided 95 % interval (scipy-free, from
  the t table), so `paired_interval_by_hand(a, b)` is an independent oracle of the paired interval:
  mean(a - b) +- T975[n - 1] * sd(a - b, ddof 1) / sqrt(n).
"""

from __future__ import annotations

import math

import pandas as pd
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


#: Two-sided 95 % Student t quantiles t(0.975, df) from the t table, df = 1..6.
T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105, 5: 2.570581836, 6: 2.446911851}


def paired_interval_by_hand(a, b) -> tuple[float, float, float]:
    """(mean, low, high) of the paired differences a - b, computed without numpy or scipy."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = T975[n - 1] * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def seed_rows(values: dict[str, dict[str, list[float]]]) -> pd.DataFrame:
    """A `seed_table`-shaped frame: values[measure][arm] lists one value per seed (arm 'dense' or 'DKA')."""
    seeds = len(next(iter(next(iter(values.values())).values())))
    rows = []
    for seed in range(seeds):
        for arm in ("dense", "DKA"):
            rows.append({"seed": seed, "model": arm, **{m: v[arm][seed] for m, v in values.items()}})
    return pd.DataFrame(rows)
