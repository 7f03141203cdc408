"""The math of Decomposing the Deep (Badola, Roy, Padmanabhan and Lal, arXiv 2112.07719) and of its
CSG baseline (Liang et al., ECCV 2020), on tensors and modules.

A classifier is trunk -> global average pool -> features f in R^D -> linear layer (W, b), with
logits z_c = W[c, :] . f + b_c for the C classes.

1. Influential features (`frequency_histogram`, `influential_indices`). Per image i, l1-normalise
   the pooled features, f_i / sum_j |f_ij|, and take the indices T_i of its k largest. Per class c,
   the frequency histogram h_c[j] = #{i in class c : j in T_i}; S_c = the n indices with the
   largest h_c. Tie-breaks (ours, deterministic; upstream never published this step): within an
   image, equal values rank by the lower feature index; within a class, equal counts rank by the
   lower feature index.
2. The decomposed head (`DecomposedHead`): z_c = sum_{j in S_c} W[c, j] f_j + b_c, a (C x n) weight
   (C*n weights instead of C*D), row c initialised from W[c, S_c], the bias copied; it returns
   (B, C). (Upstream's forward gathers class 0's weights for every class and returns (B, 1, C).)
3. Finetuning (`finetune`): cross-entropy on the decomposed logits, Adam, through `train.fit`.
4. Essentiality (`perturb`, `essentiality`): for each image of class y, replace the features in
   S_y (or all the others) by draws from N(0, 1) and classify with the full linear layer; count
   the images still correct per class (seeded). `mode="additive"` (our extension) adds
   scale * sigma_j * N(0, 1) instead, sigma_j being feature j's standard deviation over images.
5. Mutual information (`mean_mutual_information`): with x_c in {0, 1}^D the indicator of S_c,
   MI(x_a, x_b) = sum_{u, v} p(u, v) log(p(u, v) / (p(u) p(v))) over the D positions (natural log,
   as sklearn's mutual_info_score), averaged over class pairs; `include_self=True` (upstream)
   averages over all C*C ordered pairs including each class with itself.
6. CSG: a gate matrix G in [0, 1]^(C x D) on the last layer's D filters (`CSGNet`), trained with
   L = CE(standard path) + lambda_1 CE(path gated by G[y]) + lambda_2 ||G||_1 (`csg_loss`,
   `train_csg`); each class's index set is its n largest gates (`csg_indices`; `select="smallest"`
   is upstream's legacy choice).

`PUBLISHED` holds upstream's mutual-information numbers and `SEED_REFERENCE` the project seed's
accuracies, each with its source.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .. import models
from ..cache import Checkpoint
from ..errors import DataError, ParamError, require
from ..runtime import pick_device
from ..train import TrainConfig, evaluate, fit

Indices = dict[int, list[int]]

#: Upstream's mutual information between the classes' index sets (k = 5, n = 5, all C*C ordered
#: pairs incl. self-pairs), ours versus CSG's (its n smallest gates): the values printed in the
#: comments of akshaybadola/decomposing-the-deep, `mutual_info.py` (commit 3f6c20c), computed there
#: from `resnet20_cifar-10_indices.json` and `best_save_CSG.pth`.
PUBLISHED = {
    "MI ours (k=5)": 0.03453775959861226,
    "MI CSG (k=5)": 0.03750908408724534,
}

#: The project seed's accuracies (%) for the akamaster ResNet-20 on the *full* CIFAR-10 test set
#: (10,000 images; normalisation mean (0.491, 0.482, 0.447), std (0.247, 0.243, 0.261)), as the
#: seed states them (repeated in ../shared/data/README.md, Notes). Strings: two are ranges.
SEED_REFERENCE = {
    "original": "91.71",
    "decomposed (n=5)": "88.59",
    "finetuned, 1 epoch": "91.30-91.40",
    "finetuned, best": "91.50-91.60",
}


# ============================================================================ features
@dataclasses.dataclass
class Features:
    """Pooled features entering the head, the model's logits and the labels of a dataset (on CPU)."""

    features: torch.Tensor   # (N, D) float32
    logits: torch.Tensor     # (N, C)
    labels: torch.Tensor     # (N,) int64

    @property
    def num_features(self) -> int:
        return self.features.shape[1]

    def accuracy(self) -> float:
        return (self.logits.argmax(1) == self.labels).float().mean().item()

    @classmethod
    def concat(cls, parts: list["Features"]) -> "Features":
        return cls(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)))


@torch.no_grad()
def extract_features(model: nn.Module, dataset: Dataset, batch_size: int = 256, device: str = "auto",
                     progress: bool = True) -> Features:
    """Pooled features, logits and labels of `model` (eval mode) over `dataset` (items (x, y, ...))."""
    dev = pick_device(device)
    model.eval().to(dev)
    feats, logits, labels = [], [], []
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size, shuffle=False), desc="features",
                      disable=not progress, leave=False):
        f, z = models.pooled_features(model, batch[0].to(dev))
        feats.append(f.float().flatten(1).cpu())
        logits.append(z.float().cpu())
        labels.append(torch.as_tensor(batch[1]).long())
    if not feats:
        raise ParamError("dataset", "is empty; no features to extract")
    return Features(torch.cat(feats), torch.cat(logits), torch.cat(labels))


# ============================================================================ influential features
def check_k_n(k: int | None, n: int | None, num_features: int) -> None:
    """ParamError unless 1 <= k <= D and 1 <= n <= D."""
    for name, value in (("k", k), ("n", n)):
        if value is None:
            continue
        require(isinstance(value, (int, np.integer)) and not isinstance(value, bool), name,
                f"must be an integer, got {value!r}")
        require(1 <= value <= num_features, name,
                f"must be between 1 and the number of features D = {num_features}, got {value}")


def topk_per_image(features: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k) indices of each image's k largest l1-normalised features (ties: lower index first).

    l1 normalisation (x / sum |x|) does not change the order within an image; it is kept because the
    paper describes it. The sort is stable, so equal values (e.g. ReLU zeros) rank by index.
    """
    check_k_n(k, None, features.shape[1])
    f = features.detach().float().cpu()
    f = f / f.abs().sum(1, keepdim=True).clamp_min(1e-12)
    return torch.sort(-f, dim=1, stable=True).indices[:, :k]


def frequency_histogram(features: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int) -> np.ndarray:
    """(C, D) counts: how often each feature index is among an image's top-k, over the images of each class."""
    labels = torch.as_tensor(labels).long().cpu()
    require(labels.numel() == features.shape[0], "labels", f"{labels.numel()} labels for {features.shape[0]} feature rows")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ParamError("labels", f"must lie in 0..{num_classes - 1}")
    top = topk_per_image(features, k)
    D = features.shape[1]
    flat = (labels[:, None] * D + top).reshape(-1)
    return torch.bincount(flat, minlength=num_classes * D).reshape(num_classes, D).numpy()


def most_frequent(freq: np.ndarray, n: int) -> Indices:
    """Each class's n most frequent feature indices, most frequent first (equal counts: lower index first)."""
    freq = np.asarray(freq)
    check_k_n(None, n, freq.shape[1])
    order = np.argsort(-freq, axis=1, kind="stable")[:, :n]
    return {c: [int(j) for j in order[c]] for c in range(freq.shape[0])}


def influential_indices(features: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int,
                        n: int) -> tuple[Indices, np.ndarray]:
    """(S_c per class, the (C, D) frequency histogram) from top-k counts per class."""
    check_k_n(k, n, features.shape[1])
    freq = frequency_histogram(features, labels, num_classes, k)
    return most_frequent(freq, n), freq


# ============================================================================ index sets
def check_indices(indices: Mapping, num_classes: int | None = None, num_features: int | None = None,
                  where: str = "indices", equal_sizes: bool = True) -> Indices:
    """Validated copy {class int: [feature ints]}; DataError (naming `where`) when it does not fit."""
    def fail(message, expected=None):
        raise DataError(where, message, expected)

    if not isinstance(indices, Mapping) or not indices:
        fail("holds no index sets", '{"0": [i1, ...], "1": [...], ...}')
    out: Indices = {}
    for key, values in indices.items():
        try:
            c = int(key)
        except (TypeError, ValueError):
            fail(f"class key {key!r} is not an integer", "class indices 0..C-1 as keys")
        if not isinstance(values, (list, tuple, np.ndarray, torch.Tensor)) or len(values) == 0:
            fail(f"class {c} has no feature list", "a non-empty list of feature indices per class")
        try:
            vals = [int(v) for v in values]
        except (TypeError, ValueError):
            fail(f"class {c} has non-integer feature indices")
        if any(float(v) != int(v) for v in values):
            fail(f"class {c} has non-integer feature indices")
        if len(set(vals)) != len(vals):
            fail(f"class {c} lists a feature index twice: {vals}")
        if min(vals) < 0 or (num_features is not None and max(vals) >= num_features):
            fail(f"class {c} has feature indices outside 0..{(num_features or 0) - 1}: {vals}",
                 f"indices into the model's {num_features} pooled features")
        out[c] = vals
    classes = sorted(out)
    expect = list(range(num_classes)) if num_classes is not None else list(range(len(classes)))
    if classes != expect:
        fail(f"has classes {classes[:12]}{' ...' if len(classes) > 12 else ''}, the model has "
             f"{len(expect)} classes", f"exactly the classes 0..{len(expect) - 1}")
    sizes = {len(v) for v in out.values()}
    if equal_sizes and len(sizes) > 1:
        fail(f"classes have different numbers of indices {sorted(sizes)}", "the same n for every class")
    return {c: out[c] for c in classes}


def indices_tensor(indices: Mapping) -> torch.LongTensor:
    """(C, n) LongTensor of index sets (rows in class order)."""
    clean = check_indices(indices)
    return torch.tensor([clean[c] for c in sorted(clean)], dtype=torch.long)


def indicator_matrix(indices: Mapping, num_features: int) -> np.ndarray:
    """(C, D) 0/1 matrix: row c marks the features in S_c."""
    clean = check_indices(indices, num_features=num_features, equal_sizes=False)
    out = np.zeros((len(clean), num_features), dtype=np.int64)
    for c, vals in clean.items():
        out[c, vals] = 1
    return out


# ============================================================================ decomposed head
class DecomposedHead(nn.Module):
    """z_c = sum_{j in S_c} weight[c, :] . f[S_c] + bias_c: a (C x n) weight over per-class index sets.

    Returns (B, C). Built from a linear layer by `from_linear` (row c initialised from W[c, S_c]).
    """

    is_head = True  # lets models.head / set_head find it

    def __init__(self, indices: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 num_features: int):
        super().__init__()
        indices = torch.as_tensor(indices, dtype=torch.long)
        require(indices.dim() == 2, "indices", f"must be (C, n), got shape {tuple(indices.shape)}")
        require(tuple(weight.shape) == tuple(indices.shape), "weight",
                f"must have the indices' shape {tuple(indices.shape)}, got {tuple(weight.shape)}")
        require(int(indices.min()) >= 0 and int(indices.max()) < num_features, "indices",
                f"must lie in 0..{num_features - 1}")
        self.num_features = num_features
        self.register_buffer("indices", indices.clone())
        self.weight = nn.Parameter(weight.detach().clone().float())
        self.bias = nn.Parameter(bias.detach().clone().float()) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, indices: Mapping | torch.Tensor) -> "DecomposedHead":
        """Decompose `linear` (C x D): row c keeps W[c, S_c] (in the order of S_c), the bias is copied."""
        C, D = linear.weight.shape
        if isinstance(indices, Mapping):
            idx = indices_tensor(check_indices(indices, C, D))
        else:
            idx = torch.as_tensor(indices, dtype=torch.long)
        require(idx.shape[0] == C, "indices", f"has {idx.shape[0]} classes, the linear layer {C}")
        check_k_n(None, idx.shape[1], D)
        with torch.no_grad():
            weight = torch.gather(linear.weight.detach().float().cpu(), 1, idx)
        head = cls(idx, weight, linear.bias, D)
        return head.to(linear.weight.device)

    @property
    def num_classes(self) -> int:
        return self.indices.shape[0]

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        f = f.flatten(1)
        picked = f[:, self.indices]                       # (B, C, n): features of each class's own set
        z = (picked * self.weight.to(picked.dtype)).sum(-1)  # (B, C)
        return z + self.bias.to(z.dtype) if self.bias is not None else z

    def dense_weight(self) -> torch.Tensor:
        """The equivalent (C x D) weight: W[c, S_c] in place, zero elsewhere."""
        W = torch.zeros(self.num_classes, self.num_features, device=self.weight.device, dtype=self.weight.dtype)
        return W.scatter(1, self.indices, self.weight)

    def extra_repr(self) -> str:
        return f"classes={self.num_classes}, n={self.indices.shape[1]}, features={self.num_features}"


def decompose(model: nn.Module, indices: Mapping) -> nn.Module:
    """A copy of `model` whose final linear layer is replaced by its `DecomposedHead` over `indices`."""
    _, linear = models.head(model)
    if not isinstance(linear, nn.Linear):
        raise ParamError("model", f"head is a {type(linear).__name__}, not a linear layer to decompose")
    out = copy.deepcopy(model)
    models.set_head(out, DecomposedHead.from_linear(linear, indices))
    return out


def masked_weight(weight: torch.Tensor, indices: Mapping) -> torch.Tensor:
    """W with every entry outside S_c set to zero (the dense equivalent of the decomposed head)."""
    mask = torch.as_tensor(indicator_matrix(indices, weight.shape[1]), dtype=weight.dtype, device=weight.device)
    return weight * mask


def head_accuracy(feats: Features, head: nn.Module) -> float:
    """Top-1 accuracy of a head (linear or decomposed) applied to precomputed features."""
    with torch.no_grad():
        z = head.float().cpu()(feats.features)
    return (z.argmax(1) == feats.labels).float().mean().item()


# ============================================================================ finetuning
def finetune(model: nn.Module, indices: Mapping, train_ds: Dataset, val_ds: Dataset, epochs: int = 1,
             lr: float = 1e-4, batch_size: int = 64, seed: int = 0, device: str = "auto",
             progress: bool = True, checkpoint: Checkpoint | None = None,
             weight_decay: float = 0.0) -> tuple[nn.Module, pd.DataFrame]:
    """Finetune the decomposed model (cross-entropy on the decomposed logits, Adam) through `train.fit`.

    Returns (finetuned decomposed model, history) where history has an epoch-0 row (before
    finetuning) and one row per epoch with `val_acc` measured after it. With `checkpoint`, training
    saves its state each epoch and resumes from it.
    """
    require(isinstance(epochs, int) and epochs >= 0, "finetune_epochs", f"must be an integer >= 0, got {epochs!r}")
    net = decompose(model, indices)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adam", weight_decay=weight_decay,
                      schedule="constant", seed=seed, device=device, progress=progress)
    start = evaluate(net, val_ds, device=device)
    history = fit(net, train_ds, val_ds, cfg, checkpoint=checkpoint) if epochs > 0 else pd.DataFrame()
    first = pd.DataFrame([{"epoch": 0, "val_acc": start["acc"], "val_loss": start["loss"]}])
    return net, pd.concat([first, history], ignore_index=True)


# ============================================================================ essentiality
def feature_spread(features: torch.Tensor) -> torch.Tensor:
    """Per-feature standard deviation over images (the scale of the additive-noise extension)."""
    return features.float().std(0, unbiased=False)


def perturb(features: torch.Tensor, labels: torch.Tensor, indices: Mapping, where: str = "influential",
            mode: str = "replace", scale: float = 1.0, spread: torch.Tensor | None = None,
            seed: int = 0) -> torch.Tensor:
    """Features with noise at each image's true-class set S_y (`where="influential"`) or at all others.

    `mode="replace"` (paper): those features become N(0, 1) draws. `mode="additive"` (our extension):
    they get `scale * spread_j * N(0, 1)` added (spread: per-feature std; from the features if None).
    Seeded: the same seed gives the same draws.
    """
    require(where in ("influential", "non_influential"), "where", f"must be influential or non_influential, got {where!r}")
    require(mode in ("replace", "additive"), "noise", f"must be replace or additive, got {mode!r}")
    require(scale >= 0, "noise_scale", f"must be >= 0, got {scale}")
    f = features.detach().float().cpu()
    labels = torch.as_tensor(labels).long().cpu()
    mask = torch.as_tensor(indicator_matrix(indices, f.shape[1]), dtype=torch.bool)[labels]  # (N, D): S_y
    if where == "non_influential":
        mask = ~mask
    noise = torch.randn(f.shape, generator=torch.Generator().manual_seed(int(seed)))
    if mode == "replace":
        return torch.where(mask, noise, f)
    spread = feature_spread(f) if spread is None else spread.float().cpu()
    return torch.where(mask, f + scale * spread[None, :] * noise, f)


def essentiality(feats: Features, linear: nn.Linear, indices: Mapping, where: str = "influential",
                 mode: str = "replace", scale: float = 1.0, seed: int = 0, spread: torch.Tensor | None = None,
                 class_names: list[str] | None = None) -> pd.DataFrame:
    """Per class: images, correct without noise, and correct with noise at `where` (full linear layer)."""
    W = linear.weight.detach().float().cpu()
    b = linear.bias.detach().float().cpu() if linear.bias is not None else torch.zeros(W.shape[0])
    C = W.shape[0]
    check_indices(indices, C, W.shape[1])
    noisy = perturb(feats.features, feats.labels, indices, where, mode, scale, spread, seed)
    clean_ok = ((feats.features.float() @ W.T + b).argmax(1) == feats.labels)
    noisy_ok = ((noisy @ W.T + b).argmax(1) == feats.labels)
    rows = []
    for c in range(C):
        sel = feats.labels == c
        rows.append({"class": class_names[c] if class_names is not None else c, "images": int(sel.sum()),
                     "correct clean": int(clean_ok[sel].sum()), "correct with noise": int(noisy_ok[sel].sum())})
    return pd.DataFrame(rows)


# ============================================================================ mutual information
def mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information (nats) of two discrete label vectors, as sklearn.metrics.mutual_info_score."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    require(a.shape == b.shape, "indicators", "must have the same length")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float(max((p[nz] * (np.log(p[nz]) - np.log((pa @ pb)[nz]))).sum(), 0.0))


def pairwise_mutual_information(indices: Mapping, num_features: int) -> np.ndarray:
    """(C, C) mutual information between the classes' binary indicators over the D features."""
    X = indicator_matrix(indices, num_features)
    C = X.shape[0]
    out = np.zeros((C, C))
    for i in range(C):
        for j in range(i, C):
            out[i, j] = out[j, i] = mutual_info(X[i], X[j])
    return out


def mean_mutual_information(indices: Mapping, num_features: int, include_self: bool = True) -> float:
    """Average pairwise MI: over all C*C ordered pairs incl. (c, c) (upstream), or over pairs i != j."""
    M = pairwise_mutual_information(indices, num_features)
    if include_self:
        return float(M.mean())
    C = M.shape[0]
    return float(M[~np.eye(C, dtype=bool)].mean()) if C > 1 else float("nan")


# ============================================================================ CSG baseline
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
