"""The math of Decomposing the Deep (Badola, Roy, Padmanabhan and Lal, arXiv 2112.07719), on tensors
and modules (its CSG baseline is in `netanatomy.decompose.csg`).

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
   (B, C). (The seed, issue 8, describes upstream's forward as gathering class 0's weights for every
   class and returning (B, 1, C); the ResNet-20 `forward_decomposed` of upstream's modified_resnet.py
   at commits 2600780 and 3f6c20c gathers W[c, S_c] per class and returns (B, C), as here.)
3. Finetuning (`finetune`): cross-entropy on the decomposed logits, Adam, through `train.fit`.
4. Essentiality (`perturb`, `essentiality`): for each image of class y, replace the features in
   S_y (or all the others) by draws from N(0, 1) and classify with the full linear layer; count
   the images still correct per class (seeded). `mode="additive"` (our extension) adds
   scale * sigma_j * N(0, 1) instead, sigma_j being feature j's standard deviation over images.
5. Mutual information (`mean_mutual_information`): with x_c in {0, 1}^D the indicator of S_c,
   MI(x_a, x_b) = sum_{u, v} p(u, v) log(p(u, v) / (p(u) p(v))) over the D positions (natural log,
   as sklearn's mutual_info_score), averaged over class pairs; `include_self=True` (upstream)
   averages over all C*C ordered pairs including each class with itself. For binary indicators
   the joint counts follow from the overlaps: n11 = |S_a & S_b|, n10 = |S_a| - n11,
   n01 = |S_b| - n11, n00 = D - |S_a| - |S_b| + n11, so all C*C pairs come from X X^T at once.
6. Random controls (ours, `control_draws`): R_r draws, per class, n of the D features uniformly
   without replacement (`random_indicator`); per draw and image the 0/1 outcomes of the decomposed
   head with S and with R_r, and of the full head with noise at S_y, at R_r[y] and outside S_y
   (one noise draw shared by the arms), so the sets and their controls compare paired, image by image.

`PUBLISHED` holds upstream's mutual-information numbers and `SEED_REFERENCE` the project seed's
accuracies, each with its source.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .. import models
from ..cache import Checkpoint
from ..errors import DataError, ParamError, require
from ..runtime import pick_device
from ..train import TrainConfig, fit

Indices = dict[int, list[int]]

#: Upstream's mutual information between the classes' index sets (k = 5, n = 5, all C*C ordered
#: pairs incl. self-pairs), ours versus CSG's (its n smallest gates): the values in the comments
#: "# 0.03453775959861226 @ k == 5" and "# 0.03750908408724534 @ k == 5" of
#: akshaybadola/decomposing-the-deep `mutual_info.py` (commit 3f6c20c), computed there from
#: `resnet20_cifar-10_indices.json` and `best_save_CSG.pth` (both reproduced exactly by the tests).
PUBLISHED = {
    "MI ours (k=5)": 0.03453775959861226,
    "MI CSG (k=5)": 0.03750908408724534,
}

#: The project seed's accuracies (%) for the akamaster ResNet-20 on the *full* CIFAR-10 test set
#: (10,000 images): the seed's targets as ../shared/data/README.md (Notes) quotes them, "91.71 %
#: original, 88.59 % decomposed, 91.3-91.6 % finetuned" (the seed, issue 8, items 3-4, gives
#: 91.30-91.40 after one epoch and 91.50-91.60 later, with normalisation mean (0.491, 0.482, 0.447),
#: std (0.247, 0.243, 0.261)). Not numbers of the paper: its tables could not be checked here.
#: Strings: two are ranges.
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
            clean = check_indices(indices, C, D)  # rows in class order 0..C-1
            idx = torch.tensor([clean[c] for c in range(C)], dtype=torch.long)
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


def head_logits(features: torch.Tensor, head: nn.Module) -> torch.Tensor:
    """Logits of a head (linear or decomposed) on precomputed features, on CPU. A decomposed head
    is applied through its dense equivalent (W masked outside S_c), which needs no (N, C, n) gather."""
    f = features.float().cpu()
    with torch.no_grad():
        if isinstance(head, DecomposedHead):
            z = f @ head.dense_weight().detach().float().cpu().T
            return z + head.bias.detach().float().cpu() if head.bias is not None else z
        return head.float().cpu()(f)


def correct(feats: Features, head: nn.Module) -> torch.Tensor:
    """(N,) bool: each image classified correctly by `head` on its precomputed features."""
    return head_logits(feats.features, head).argmax(1) == feats.labels


def head_accuracy(feats: Features, head: nn.Module) -> float:
    """Top-1 accuracy of a head (linear or decomposed) applied to precomputed features."""
    return correct(feats, head).float().mean().item()


# ============================================================================ finetuning
def finetune(model: nn.Module, indices: Mapping, train_ds: Dataset, val_ds: Dataset, epochs: int = 1,
             lr: float = 1e-4, batch_size: int = 64, seed: int = 0, device: str = "auto",
             progress: bool = True, checkpoint: Checkpoint | None = None,
             weight_decay: float = 0.0) -> tuple[nn.Module, pd.DataFrame]:
    """Finetune the decomposed model (cross-entropy on the decomposed logits, Adam) through `train.fit`.

    Returns (finetuned decomposed model, history): one row per epoch with `val_acc` measured after
    it (empty for 0 epochs). With `checkpoint`, training saves its state each epoch and resumes from it.
    """
    require(isinstance(epochs, int) and epochs >= 0, "finetune_epochs", f"must be an integer >= 0, got {epochs!r}")
    net = decompose(model, indices)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adam", weight_decay=weight_decay,
                      schedule="constant", seed=seed, device=device, progress=progress)
    history = fit(net, train_ds, val_ds, cfg, checkpoint=checkpoint) if epochs > 0 else pd.DataFrame()
    return net, history


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
    f = features.detach().float().cpu()
    labels = torch.as_tensor(labels).long().cpu()
    mask = torch.as_tensor(indicator_matrix(indices, f.shape[1]), dtype=torch.bool)[labels]  # (N, D): S_y
    return add_noise(f, ~mask if where == "non_influential" else mask, normal(f.shape, seed), mode, scale, spread)


def normal(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """N(0, 1) draws of `shape` from a generator seeded with `seed` (the essentiality noise)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))


def add_noise(f: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor, mode: str = "replace", scale: float = 1.0,
              spread: torch.Tensor | None = None) -> torch.Tensor:
    """`f` (N, D) with `noise` where `mask` is set: the noise itself (replace) or `scale * spread * noise`
    added (additive); mask and noise may carry a leading batch dimension (B, N, D)."""
    require(mode in ("replace", "additive"), "noise", f"must be replace or additive, got {mode!r}")
    require(scale >= 0, "noise_scale", f"must be >= 0, got {scale}")
    if mode == "replace":
        return torch.where(mask, noise, f)
    spread = feature_spread(f) if spread is None else spread.float().cpu()
    return torch.where(mask, f + scale * spread[None, :] * noise, f)


def noisy_correct(feats: Features, linear: nn.Linear, indices: Mapping, where: str = "influential",
                  mode: str = "replace", scale: float = 1.0, seed: int = 0,
                  spread: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) bool: each image still correct (full linear layer) with noise at `where` (see `perturb`)."""
    W = linear.weight.detach().float().cpu()
    check_indices(indices, W.shape[0], W.shape[1])
    noisy = perturb(feats.features, feats.labels, indices, where, mode, scale, spread, seed)
    return head_logits(noisy, linear).argmax(1) == feats.labels


def essentiality(feats: Features, linear: nn.Linear, indices: Mapping, where: str = "influential",
                 mode: str = "replace", scale: float = 1.0, seed: int = 0, spread: torch.Tensor | None = None,
                 class_names: list[str] | None = None) -> pd.DataFrame:
    """Per class: images, correct without noise, and correct with noise at `where` (full linear layer)."""
    C = linear.weight.shape[0]
    clean_ok = correct(feats, linear)
    noisy_ok = noisy_correct(feats, linear, indices, where, mode, scale, seed, spread)
    rows = []
    for c in range(C):
        sel = feats.labels == c
        rows.append({"class": class_names[c] if class_names is not None else c, "images": int(sel.sum()),
                     "correct clean": int(clean_ok[sel].sum()), "correct with noise": int(noisy_ok[sel].sum())})
    return pd.DataFrame(rows)


# ============================================================================ mutual information
def pairwise_mutual_information(indices: Mapping, num_features: int) -> np.ndarray:
    """(C, C) mutual information (nats) between the classes' binary indicators over the D features,
    equal to sklearn.metrics.mutual_info_score of each pair of indicator vectors (from the overlaps)."""
    return indicator_mutual_information(indicator_matrix(indices, num_features))


def indicator_mutual_information(X: np.ndarray) -> np.ndarray:
    """(C, C) pairwise mutual information of the rows of a (C, D) 0/1 indicator matrix (see above)."""
    X = np.asarray(X, dtype=np.float64)
    D = float(X.shape[1])
    both = X @ X.T
    size = X.sum(1)
    sa, sb = size[:, None], size[None, :]
    cells = (((1, 1), both), ((1, 0), sa - both), ((0, 1), sb - both), ((0, 0), D - sa - sb + both))
    marginal_a, marginal_b = {1: sa / D, 0: 1 - sa / D}, {1: sb / D, 0: 1 - sb / D}
    out = np.zeros_like(both)
    with np.errstate(divide="ignore", invalid="ignore"):
        for (u, v), count in cells:
            p = count / D
            out += np.where(p > 0, p * np.log(p / (marginal_a[u] * marginal_b[v])), 0.0)
    return np.maximum(out, 0.0)


def mean_mutual_information(indices: Mapping, num_features: int, include_self: bool = True) -> float:
    """Average pairwise MI: over all C*C ordered pairs incl. (c, c) (upstream), or over pairs i != j."""
    M = pairwise_mutual_information(indices, num_features)
    if include_self:
        return float(M.mean())
    C = M.shape[0]
    return float(M[~np.eye(C, dtype=bool)].mean()) if C > 1 else float("nan")


# ============================================================================ random controls
def random_indicator(num_classes: int, num_features: int, n: int, seed: int | tuple[int, ...] = 0) -> np.ndarray:
    """(C, D) bool: per class, n of the D features drawn uniformly without replacement (seeded; an
    int or a tuple of ints such as (run seed, draw))."""
    check_k_n(None, n, num_features)
    keys = np.random.default_rng(seed).random((num_classes, num_features))
    picked = np.argpartition(keys, n - 1, axis=1)[:, :n] if n < num_features else np.argsort(keys, axis=1)
    out = np.zeros((num_classes, num_features), dtype=bool)
    np.put_along_axis(out, picked, True, axis=1)
    return out


def random_index_sets(num_classes: int, num_features: int, n: int, seed: int | tuple[int, ...] = 0) -> Indices:
    """`random_indicator` as index sets {class: sorted feature indices}."""
    X = random_indicator(num_classes, num_features, n, seed)
    return {c: np.flatnonzero(X[c]).tolist() for c in range(num_classes)}


@dataclasses.dataclass
class ControlDraws:
    """Outcomes of a collection of index sets S and of R random collections of the same size.

    Per draw r (random sets R_r seeded (seed, r), one noise draw seeded seed * 10000 + r shared by
    all arms) and per image i, 0/1 correctness (R, N):
    `decomposed` / `decomposed_random`: the decomposed head with S / with R_r;
    `noise_sets` / `noise_random` / `noise_others`: the full linear layer with noise at S_y / at
    R_r[y] / at all features outside S_y. `mi_random`: (C, C) pairwise MI averaged over the draws;
    `mi_draws`: (R,) each draw's mean MI over distinct class pairs."""

    decomposed: torch.Tensor
    decomposed_random: torch.Tensor
    noise_sets: torch.Tensor
    noise_random: torch.Tensor
    noise_others: torch.Tensor
    mi_random: np.ndarray
    mi_draws: np.ndarray


def _hits(f: torch.Tensor, W: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """0/1 correctness of logits f W^T + b; f (N, D) or (B, N, D), W (C, D) or (B, C, D) -> (B, N) or (N,)."""
    return (torch.matmul(f, W.transpose(-1, -2)) + b).argmax(-1).eq(labels).float()


def control_draws(feats: Features, linear: nn.Linear, indices: Mapping, draws: int, seed: int = 0,
                  mode: str = "replace", scale: float = 1.0, chunk_floats: int = 2 ** 24) -> ControlDraws:
    """`ControlDraws` of `indices` against `draws` random collections (see the class for the arms),
    computed for several draws at once (about `chunk_floats` noise values per chunk)."""
    W = linear.weight.detach().float().cpu()
    b = linear.bias.detach().float().cpu() if linear.bias is not None else torch.zeros(W.shape[0])
    C, D = W.shape
    sets = torch.as_tensor(indicator_matrix(check_indices(indices, C, D), D), dtype=torch.bool)
    n = int(sets[0].sum())
    f, y = feats.features.float().cpu(), feats.labels.long().cpu()
    spread = feature_spread(f) if mode == "additive" else None
    at_sets = sets[y]
    out: dict[str, list] = {k: [] for k in ("decomposed_random", "noise_sets", "noise_random", "noise_others")}
    mi_sum, mi_draws = np.zeros((C, C)), []
    off_diagonal = ~np.eye(C, dtype=bool)
    step = max(1, chunk_floats // f.numel())
    for start in range(0, draws, step):
        rs = range(start, min(draws, start + step))
        X = np.stack([random_indicator(C, D, n, (seed, r)) for r in rs])          # (B, C, D)
        rand = torch.as_tensor(X)
        noise = torch.stack([normal(f.shape, seed * 10_000 + r) for r in rs])      # (B, N, D)
        out["decomposed_random"].append(_hits(f, W * rand, b, y))
        for key, mask in (("noise_sets", at_sets), ("noise_random", rand[:, y]), ("noise_others", ~at_sets)):
            out[key].append(_hits(add_noise(f, mask, noise, mode, scale, spread), W, b, y))
        for x in X:
            mi = indicator_mutual_information(x)
            mi_sum += mi
            mi_draws.append(mi[off_diagonal].mean() if C > 1 else 0.0)
    own = _hits(f, W * sets, b, y)
    return ControlDraws(own.expand(draws, -1), **{k: torch.cat(v) for k, v in out.items()},
                        mi_random=mi_sum / draws, mi_draws=np.asarray(mi_draws))
