"""The math of the CSG baseline (Class-Specific Gates; Liang et al., "Training Interpretable Convolutional
Neural Networks by Differentiating Class-specific Filters", ECCV 2020), as Decomposing the Deep
compares against it, on tensors and modules.

A gate matrix G in [0, 1]^(C x D) on the last layer's D filters (`CSGNet`) is trained with
L = CE(standard path) + lambda_1 CE(path gated by G[y]) + lambda_2 ||G||_1 (`csg_loss`, `train_csg`);
each class's index set is its n largest gates (`csg_indices`). `select="smallest"` keeps upstream's choice (the n smallest gates: numpy's argsort,
first n, in akshaybadola/decomposing-the-deep `mutual_info.py`), which reproduces its published
CSG index file and MI.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .. import models
from ..cache import Checkpoint
from ..errors import ParamError, require
from ..train import TrainConfig, fit
from .method import Indices, check_k_n


class CSGNet(nn.Module):
    """A classifier with a class-specific gate matrix G (C x D) on its last layer's filters (CSG).

    `forward(x)` is the standard path (the wrapped model, ungated), so evaluation is unchanged.
    The CSG path gates the last layer's D channels by G[y]; because global average pooling is
    linear per channel, gating the (B, D, H, W) maps equals gating the pooled features, which
    `gated_logits` does (checked in tests against `hooks.channel_gates` on the last layer).

    G is stored as `gate_param` with G = gate_scale * gate_param: under Adam (scale-invariant
    steps) G then learns `gate_scale` times faster than the network's weights, which lets a short
    run from trained weights move the gates (train.fit has one learning rate for all parameters).
    """

    def __init__(self, model: nn.Module, gates: torch.Tensor | None = None, gate_scale: float = 1.0):
        super().__init__()
        self.net = model
        _, linear = models.head(model)
        C, D = linear.weight.shape
        g = torch.ones(C, D) if gates is None else torch.as_tensor(gates, dtype=torch.float32)
        require(tuple(g.shape) == (C, D), "gates", f"must be (classes, features) = ({C}, {D}), got {tuple(g.shape)}")
        require(gate_scale > 0, "csg_gate_lr_mult", f"must be positive, got {gate_scale}")
        self.gate_scale = float(gate_scale)
        self.gate_param = nn.Parameter((g / self.gate_scale).clone().to(linear.weight.device))

    @property
    def gates(self) -> torch.Tensor:
        """The gate matrix G (C x D)."""
        return self.gate_param * self.gate_scale

    def set_gates(self, gates: torch.Tensor) -> None:
        with torch.no_grad():
            self.gate_param.copy_(torch.as_tensor(gates, dtype=torch.float32) / self.gate_scale)

    def clamp_gates(self, low: float = 0.0, high: float = 1.0) -> None:
        """Project G onto [low, high] (CSG's gate range)."""
        with torch.no_grad():
            self.gate_param.clamp_(low / self.gate_scale, high / self.gate_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def linear(self) -> nn.Linear:
        return models.head(self.net)[1]

    def gated_logits(self, features: torch.Tensor, gate_rows: torch.Tensor) -> torch.Tensor:
        """Logits of the CSG path: features gated by the given class rows of G, then the linear head."""
        return self.linear()(features * self.gates[gate_rows].to(features.dtype))


def csg_loss(lambda_1: float = 0.05, lambda_2: float = 0.05, clamp: bool = True):
    """loss_fn for train.fit: CE(standard path) + lambda_1 CE(CSG path gated by G[y]) + lambda_2 ||G||_1.

    ||G||_1 is the sum of |G| over all C x D entries. With `clamp`, G is projected onto [0, 1]
    before each step (CSG's gate range).
    """
    require(lambda_1 >= 0, "csg_lambda_1", f"must be >= 0, got {lambda_1}")
    require(lambda_2 >= 0, "csg_lambda_2", f"must be >= 0, got {lambda_2}")

    def loss_fn(net, x, y):
        csg = net.module if hasattr(net, "module") else net
        if clamp:
            csg.clamp_gates()
        f, logits = models.pooled_features(csg.net, x)
        gated = csg.gated_logits(f.flatten(1), y)
        loss = (F.cross_entropy(logits.float(), y) + lambda_1 * F.cross_entropy(gated.float(), y)
                + lambda_2 * csg.gates.abs().sum())
        return loss, logits
    return loss_fn


def train_csg(model: nn.Module, train_ds: Dataset, val_ds: Dataset | None, epochs: int = 2, lr: float = 1e-3,
              lambda_1: float = 0.05, lambda_2: float = 0.05, batch_size: int = 128, seed: int = 0,
              device: str = "auto", progress: bool = True, checkpoint: Checkpoint | None = None,
              optimizer: str = "adam", gate_lr_mult: float = 30.0) -> tuple[CSGNet, pd.DataFrame]:
    """Train a CSGNet (standard path + gated path + sparsity) from `model`'s weights through `train.fit`.

    The gates start at 1 and learn `gate_lr_mult` times faster than the weights (exact for Adam;
    for SGD the gate parametrisation uses its square root, so the step is scaled likewise). With
    `checkpoint`, training saves its state each epoch and resumes from it.
    """
    require(isinstance(epochs, int) and epochs >= 1, "csg_epochs", f"must be an integer >= 1, got {epochs!r}")
    scale = gate_lr_mult if optimizer in ("adam", "adamw") else math.sqrt(gate_lr_mult)
    net = CSGNet(copy.deepcopy(model), gate_scale=scale)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=0.0,
                      schedule="cosine", seed=seed, device=device, progress=progress)
    history = fit(net, train_ds, val_ds, cfg, checkpoint=checkpoint, loss_fn=csg_loss(lambda_1, lambda_2))
    net.clamp_gates()
    return net.eval(), history


def csg_indices(gates: torch.Tensor | np.ndarray, n: int, select: str = "largest") -> Indices:
    """Each class's n largest gates (ties: lower index first); `select="smallest"` is upstream's legacy.

    The legacy choice reproduces the published CSG index file exactly: numpy's default argsort,
    first n, i.e. the n *smallest* gates.
    """
    G = gates.detach().float().cpu().numpy() if isinstance(gates, torch.Tensor) else np.asarray(gates)
    check_k_n(None, n, G.shape[1])
    if select == "largest":
        order = np.argsort(-G, axis=1, kind="stable")[:, :n]
    elif select == "smallest":
        order = np.argsort(G, axis=1)[:, :n]
    else:
        raise ParamError("csg_select", f"must be largest or smallest (legacy), got {select!r}")
    return {c: [int(j) for j in order[c]] for c in range(G.shape[0])}
