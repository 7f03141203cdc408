"""Decomposing the Deep (Badola et al. 2021, arXiv 2112.07719; upstream akshaybadola/decomposing-the-deep).

A classifier is trunk -> global average pool -> features f (D of them) -> linear layer (W, b). The
method finds, per class c, a small set S_c of *influential* features and replaces the head by a
decomposed one, z_c = sum_{j in S_c} W[c, j] f_j + b_c (C*n weights instead of C*D).

This module holds every step of the paper and of its CSG baseline:

1. `frequency_histogram` / `influential_indices`: per image, l1-normalise the pooled features and
   take the indices of the top-k; per class, count how often each feature index appears; S_c is the
   n most frequent. Tie-breaks (documented, deterministic): within an image, equal values rank by
   the lower feature index; within a class, equal counts rank by the lower feature index.
   (The upstream repository never published this step.)
2. `DecomposedHead`: a (C x n) weight initialised row by row from W[c, S_c], bias copied; returns
   (B, C). (Upstream's forward gathers class 0's weights for every class and returns (B, 1, C).)
3. `finetune`: cross-entropy on the decomposed logits with Adam through `train.fit`.
4. `essentiality`: replace the features in S_true (or all others) by N(0, 1) draws, classify with
   the full linear layer, count images still correct per class (seeded). `mode="additive"` (our
   extension) adds noise scaled to each feature's spread instead.
5. `mean_mutual_information`: mutual information (natural log, as sklearn's mutual_info_score)
   between the classes' binary index indicators, averaged over class pairs; `include_self=True`
   (upstream) averages over all C*C ordered pairs including each class with itself.
6. CSG (Liang et al., ECCV 2020): `CSGNet` (a model plus a C x D gate matrix on the last layer's
   filters), `csg_loss`, `train_csg` through `train.fit`, `load_csg_checkpoint`, and `csg_indices`
   (each class's n largest gates; `select="smallest"` is upstream's legacy choice).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import models
from .errors import DataError, ParamError, require
from .runtime import cache_dir, cache_key, pick_device, resolve_path, weights_fingerprint

Indices = dict[int, list[int]]

# The seed's numbers for the akamaster ResNet-20 on the *full* CIFAR-10 test set (10,000 images),
# with normalisation mean (0.491, 0.482, 0.447), std (0.247, 0.243, 0.261); and upstream's MI.
SEED_REFERENCE = {
    "original": "91.71",
    "decomposed (n=5)": "88.59",
    "finetuned, 1 epoch": "91.30-91.40",
    "finetuned, best": "91.50-91.60",
    "MI ours (k=5, legacy)": 0.034538,
    "MI CSG (k=5, legacy)": 0.037509,
}

# Normalisations for CIFAR-10 inputs: the akamaster checkpoint was trained with ImageNet mean/std;
# the seed numbers quote CIFAR mean/std. Both give 91.5 % on CIFAR-10 test[0:1000].
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.491, 0.482, 0.447), (0.247, 0.243, 0.261)),
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


@torch.no_grad()
def extract_features(model: nn.Module, dataset: Dataset, batch_size: int = 256, device: str = "auto",
                     progress: bool = True, cache_tag: str | None = None) -> Features:
    """Pooled features, logits and labels of `model` (eval mode) over `dataset` (items (x, y, ...)).

    With `cache_tag` (a string that identifies the dataset), the result is cached under
    `cache_dir("decompose", "features")` keyed by the tag and the model's weights.
    """
    path = None
    if cache_tag is not None:
        key = cache_key(tag=cache_tag, model=weights_fingerprint(model), batch_size=batch_size)
        path = cache_dir("decompose", "features") / f"{key}.pt"
        if path.exists():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            return Features(saved["features"], saved["logits"], saved["labels"])
    dev = pick_device(device)
    model.eval().to(dev)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    feats, logits, labels = [], [], []
    for batch in tqdm(loader, desc="features", disable=not progress, leave=False):
        f, z = models.pooled_features(model, batch[0].to(dev))
        feats.append(f.float().flatten(1).cpu())
        logits.append(z.float().cpu())
        labels.append(torch.as_tensor(batch[1]).long())
    if not feats:
        raise ParamError("dataset", "is empty; no features to extract")
    out = Features(torch.cat(feats), torch.cat(logits), torch.cat(labels))
    if path is not None:
        from .runtime import atomic_save
        atomic_save({"features": out.features, "logits": out.logits, "labels": out.labels}, path)
    return out


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
    order = torch.sort(-f, dim=1, stable=True).indices
    return order[:, :k]


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


# ============================================================================ index sets and files
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


def read_indices(path: str | Path, num_classes: int | None = None, num_features: int | None = None) -> Indices:
    """Read an index file in the upstream JSON layout {"0": [i1, ...], ...} (checked against the model)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "index file not found", 'a JSON file {"0": [i1, ...], ...}')
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"is not valid JSON ({exc})") from exc
    return check_indices(obj, num_classes, num_features, where=str(path))


def write_indices(indices: Mapping, path: str | Path) -> Path:
    """Write index sets in the upstream JSON layout {"0": [i1, ...], ...} (atomically)."""
    clean = check_indices(indices, equal_sizes=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from .runtime import atomic_write_text
    return atomic_write_text(path, json.dumps({str(c): v for c, v in clean.items()}))


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


def overlap(a: Mapping, b: Mapping) -> pd.DataFrame:
    """Per class: |S_a & S_b| and the Jaccard index of two index-set collections."""
    a, b = check_indices(a, equal_sizes=False), check_indices(b, equal_sizes=False)
    rows = []
    for c in a:
        sa, sb = set(a[c]), set(b.get(c, []))
        rows.append({"class": c, "shared": len(sa & sb), "jaccard": len(sa & sb) / max(len(sa | sb), 1)})
    return pd.DataFrame(rows)


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


def k_sweep(feats_fit: Features, feats_eval: Features, linear: nn.Linear, ks: Sequence[int],
            ns: Sequence[int]) -> pd.DataFrame:
    """Decomposed accuracy (%) on `feats_eval` of indices extracted on `feats_fit` for each k and n."""
    C = linear.weight.shape[0]
    rows = []
    for n in ns:
        for k in ks:
            idx, _ = influential_indices(feats_fit.features, feats_fit.labels, C, k, n)
            rows.append({"n": n, "k": k, "decomposed acc (%)": 100 * head_accuracy(
                feats_eval, DecomposedHead.from_linear(linear.cpu(), idx))})
    return pd.DataFrame(rows)


# ============================================================================ finetuning
def finetune(model: nn.Module, indices: Mapping, train_ds: Dataset, val_ds: Dataset, epochs: int = 1,
             lr: float = 1e-4, batch_size: int = 64, seed: int = 0, device: str = "auto",
             progress: bool = True, out_dir: str | Path | None = None,
             weight_decay: float = 0.0) -> tuple[nn.Module, pd.DataFrame]:
    """Finetune the decomposed model (cross-entropy on the decomposed logits, Adam) through `train.fit`.

    Returns (finetuned decomposed model, history) where history has an epoch-0 row (before
    finetuning) and one row per epoch with `val_acc` measured after it. With `out_dir`, training
    checkpoints there each epoch and resumes.
    """
    from .train import TrainConfig, evaluate, fit

    require(isinstance(epochs, int) and epochs >= 0, "finetune_epochs", f"must be an integer >= 0, got {epochs!r}")
    net = decompose(model, indices)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adam", weight_decay=weight_decay,
                      schedule="constant", seed=seed, device=device, progress=progress)
    start = evaluate(net, val_ds, device=device)
    history = fit(net, train_ds, val_ds, cfg, out_dir=out_dir) if epochs > 0 else pd.DataFrame()
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
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(f.shape, generator=gen)
    if mode == "replace":
        return torch.where(mask, noise, f)
    spread = feature_spread(f) if spread is None else spread.float().cpu()
    return torch.where(mask, f + scale * spread[None, :] * noise, f)


def essentiality(feats: Features, linear: nn.Linear, indices: Mapping, where: str = "influential",
                 mode: str = "replace", scale: float = 1.0, seed: int = 0, spread: torch.Tensor | None = None,
                 class_names: Sequence[str] | None = None) -> pd.DataFrame:
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


def essentiality_table(runs: Mapping[str, tuple[Features, nn.Linear, Mapping]], mode: str = "replace",
                       scale: float = 1.0, seed: int = 0, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Long table over methods x {influential, non_influential} x classes (same seed for every run)."""
    parts = []
    for method, (feats, linear, idx) in runs.items():
        for where in ("influential", "non_influential"):
            df = essentiality(feats, linear, idx, where, mode, scale, seed, class_names=class_names)
            df.insert(0, "noise at", where.replace("_", "-"))
            df.insert(0, "method", method)
            parts.append(df)
    return pd.concat(parts, ignore_index=True)


def essentiality_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (%) clean and with noise, per method and noise location (all classes together)."""
    g = table.groupby(["method", "noise at"], sort=False)[["images", "correct clean", "correct with noise"]].sum()
    return pd.DataFrame({"clean acc (%)": 100 * g["correct clean"] / g["images"],
                         "acc with noise (%)": 100 * g["correct with noise"] / g["images"]}).round(2)


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


def mi_table(index_sets: Mapping[str, Mapping], num_features: int) -> pd.DataFrame:
    """MI of each named index-set collection under both conventions."""
    rows = []
    for name, idx in index_sets.items():
        n = len(next(iter(check_indices(idx, equal_sizes=False).values())))
        rows.append({"indices": name, "n": n,
                     "MI incl. self-pairs (upstream)": mean_mutual_information(idx, num_features, True),
                     "MI distinct pairs": mean_mutual_information(idx, num_features, False)})
    return pd.DataFrame(rows)


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
              device: str = "auto", progress: bool = True, out_dir: str | Path | None = None,
              optimizer: str = "adam", gate_lr_mult: float = 30.0) -> tuple[CSGNet, pd.DataFrame]:
    """Train a CSGNet (standard path + gated path + sparsity) from `model`'s weights through `train.fit`.

    The gates start at 1 and learn `gate_lr_mult` times faster than the weights (exact for Adam;
    for SGD the gate parametrisation uses its square root, so the step is scaled likewise).
    """
    from .train import TrainConfig, fit

    require(isinstance(epochs, int) and epochs >= 1, "csg_epochs", f"must be an integer >= 1, got {epochs!r}")
    scale = gate_lr_mult if optimizer in ("adam", "adamw") else math.sqrt(gate_lr_mult)
    net = CSGNet(copy.deepcopy(model), gate_scale=scale)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=0.0,
                      schedule="cosine", seed=seed, device=device, progress=progress)
    history = fit(net, train_ds, val_ds, cfg, out_dir=out_dir, loss_fn=csg_loss(lambda_1, lambda_2))
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


def load_csg_checkpoint(path: str | Path, model_name: str = "resnet20") -> CSGNet:
    """A CSG checkpoint (upstream layout: `model_state_dict` with the C x D `csg` gate matrix) as a CSGNet.

    The upstream file holds numpy scalars, so it is read with pickle allowed: use trusted copies only.
    """
    obj = models.read_checkpoint(path, trusted=True)
    state = obj.get("model_state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping):
        raise DataError(path, "holds no state dict", "a dict with model_state_dict (incl. the csg gate matrix)")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    gate_keys = [k for k in state if k == "csg" or k.endswith(".csg")]
    if not gate_keys:
        raise DataError(path, "has no CSG gate matrix ('csg' key)", "model_state_dict['csg'] of shape (C, D)")
    gates = state.pop(gate_keys[0])
    linear = state.get("linear.weight", state.get("fc.weight"))
    if linear is None:
        raise DataError(path, "has no final linear layer (linear.weight / fc.weight)")
    model = models.build(model_name, int(linear.shape[0]))
    models.load_weights(model, state, where=str(path))
    return CSGNet(model, torch.as_tensor(gates).float()).eval()


# ============================================================================ loading helpers
def head_size_table(num_classes: int, num_features: int, ns: Sequence[int]) -> pd.DataFrame:
    """Weights (and 2-per-multiply-add FLOPs) of the full linear head versus decomposed heads."""
    rows = [{"head": f"full linear (C x D = {num_classes} x {num_features})", "weights": num_classes * num_features,
             "biases": num_classes, "FLOPs per image": 2 * num_classes * num_features}]
    for n in ns:
        rows.append({"head": f"decomposed (C x n = {num_classes} x {n})", "weights": num_classes * n,
                     "biases": num_classes, "FLOPs per image": 2 * num_classes * n})
    df = pd.DataFrame(rows)
    df["fraction of full"] = (df["weights"] / (num_classes * num_features)).round(4)
    return df


# ============================================================================ the notebook's run
@dataclasses.dataclass
class DecompositionConfig:
    """Checked parameters of the decomposition notebook (see the README, "Decomposing the Deep")."""

    model: str = "small_resnet"
    weights: str | None = None
    dataset: str = "concept_world"
    data_root: str | None = None
    normalize: str = "imagenet"
    k: int = 5
    n: int = 5
    k_grid: Sequence[int] = (5, 10, 15, 20, 25, 30)
    n_grid: Sequence[int] = (5, 10, 20)
    finetune_epochs: int = 2
    lr: float = 1e-4
    batch_size: int = 64
    noise: str = "replace"
    noise_scale: float = 1.0
    mi_self_pairs: bool = True
    published_indices: Mapping | None = None
    csg_checkpoint: str | None = None
    csg_index_file: str | None = None
    csg_epochs: int = 2
    csg_lr: float = 1e-3
    csg_gate_lr_mult: float = 30.0
    csg_lambda_1: float = 1.0
    csg_lambda_2: float = 0.002
    fit_fraction: float = 0.5
    max_train_images: int | None = None
    max_fit_images: int | None = None
    scale: str = "default"
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("k", "n", "finetune_epochs", "batch_size", "csg_epochs", "seed"):
            v = getattr(self, name)
            require(isinstance(v, int) and not isinstance(v, bool), name, f"must be an integer, got {v!r}")
        require(self.k >= 1, "k", f"must be >= 1, got {self.k}")
        require(self.n >= 1, "n", f"must be >= 1, got {self.n}")
        require(self.finetune_epochs >= 0, "finetune_epochs", f"must be >= 0, got {self.finetune_epochs}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.csg_epochs >= 0, "csg_epochs", f"must be >= 0, got {self.csg_epochs}")
        require(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        require(self.csg_lr > 0, "csg_lr", f"must be positive, got {self.csg_lr}")
        require(self.csg_gate_lr_mult > 0, "csg_gate_lr_mult", f"must be positive, got {self.csg_gate_lr_mult}")
        require(self.noise in ("replace", "additive"), "noise",
                f"must be 'replace' (paper: N(0,1) draws) or 'additive' (ours: scaled to each feature's spread), got {self.noise!r}")
        require(self.noise_scale >= 0, "noise_scale", f"must be >= 0, got {self.noise_scale}")
        require(self.normalize in NORMALIZATIONS, "normalize", f"must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}")
        require(0 < self.fit_fraction < 1, "fit_fraction", f"must be in (0, 1), got {self.fit_fraction}")
        for name in ("max_train_images", "max_fit_images"):
            v = getattr(self, name)
            require(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
                    name, f"must be None or a positive integer, got {v!r}")
        for name in ("k_grid", "n_grid"):
            v = getattr(self, name)
            require(isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(i, int) and i >= 1 for i in v),
                    name, f"must be a non-empty list of positive integers, got {v!r}")
        require(self.published_indices is None or isinstance(self.published_indices, Mapping), "published_indices",
                "must be None or a mapping n -> index file path")
        require(self.dataset == "concept_world" or self.weights is not None, "weights",
                f"a checkpoint path is needed for dataset {self.dataset!r} (only the built-in data has trained models)")

    @classmethod
    def from_params(cls, params: Mapping) -> "DecompositionConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in fields})


@dataclasses.dataclass
class Setup:
    """What the notebook analyses: the model, its data (fit / eval parts) and their features."""

    model_name: str
    model: nn.Module
    classes: list[str]
    fit_ds: Dataset            # index extraction (no augmentation)
    eval_ds: Dataset           # accuracy, essentiality
    train_ds: Dataset          # finetuning and CSG training (with augmentation)
    fit_label: str
    eval_label: str
    notes: list[str]
    reference: bool            # the seed's ResNet-20 / CIFAR-10 numbers apply
    all_label: str | None = None  # fit + eval together, when both are parts of one test set
    feats_fit: Features | None = None
    feats_eval: Features | None = None

    @property
    def linear(self) -> nn.Linear:
        return models.head(self.model)[1]

    @property
    def num_features(self) -> int:
        return self.linear.weight.shape[1]


def _subset(ds, positions, limit: int | None, seed: int):
    """data.Subset of `positions`, capped at `limit` items by a seeded draw (kept in order)."""
    from . import data
    positions = np.asarray(positions)
    if limit is not None and len(positions) > limit:
        positions = np.sort(np.random.default_rng(seed).choice(positions, size=limit, replace=False))
    return data.Subset(ds, positions.tolist())


def setup(cfg: DecompositionConfig) -> Setup:
    """Model and data for a run: the zoo's built-in model, or a checkpoint on real data.

    CIFAR-10 from the shared `cifar10_test_first1000.npz` (test images only) is split per class,
    seeded, into a fit part (`fit_fraction`: index extraction, finetuning, CSG training) and an
    eval part (accuracy, essentiality); a `cifar-10-batches-py` folder uses train and test splits.
    """
    from . import data, zoo

    notes: list[str] = []
    all_label = None
    weights = resolve_path(cfg.weights)
    root = resolve_path(cfg.data_root)
    if cfg.dataset == "concept_world" and weights is None:
        subj = zoo.subject(cfg.model, "concept_world", scale=cfg.scale, device=cfg.device, progress=cfg.progress)
        world = zoo.world_for(cfg.scale)
        aug = data.get_dataset("concept_world", split="train", train_aug=True, world=world)
        train = _subset(aug, np.arange(len(aug)), cfg.max_train_images, cfg.seed)
        model = subj.model
        fit_ds = _subset(subj.train_ds, np.arange(len(subj.train_ds)), cfg.max_fit_images, cfg.seed + 1)
        eval_ds = subj.val_ds
        fit_label = f"concept world train ({len(fit_ds)} images)"
        eval_label = f"concept world val ({len(eval_ds)} images)"
        classes = list(subj.classes)
        notes.append(f"built-in {cfg.model} from the zoo (scale {cfg.scale!r}), validation accuracy "
                     f"{100 * subj.val_acc:.2f} %" if subj.val_acc is not None else "")
        if len(fit_ds) < len(subj.train_ds):
            notes.append(f"indices are extracted on a seeded subset of {len(fit_ds)} of the {len(subj.train_ds)} "
                         "training images (max_fit_images)")
        if len(train) < len(aug):
            notes.append(f"finetuning and CSG training use a seeded subset of {len(train)} of the "
                         f"{len(aug)} training images (max_train_images)")
    else:
        norm = data.normalization(cfg.normalize) if cfg.dataset == "cifar10" else None
        kw = {"normalize": norm} if norm is not None else {}
        if cfg.dataset == "cifar10" and root is not None and root.is_file():
            full = data.get_dataset("cifar10", root, split="test", **kw)
            full_aug = data.get_dataset("cifar10", root, split="test", train_aug=True, **kw)
            fit_pos, eval_pos = data.split_indices(len(full), fraction=cfg.fit_fraction, seed=cfg.seed,
                                                   labels=full.targets)
            fit_ds, eval_ds = _subset(full, fit_pos, None, 0), _subset(full, eval_pos, None, 0)
            train = _subset(full_aug, fit_pos, cfg.max_train_images, cfg.seed)
            base = f"CIFAR-10 test[0:{len(full)}]"
            fit_label = f"{base} fit part ({len(fit_ds)} images)"
            eval_label = f"{base} eval part ({len(eval_ds)} images)"
            all_label = f"{base} all ({len(full)} images)"
            notes.append(f"only the first {len(full)} CIFAR-10 test images are available: they are split per class "
                         f"(seed {cfg.seed}) into a fit part ({len(fit_ds)}: index extraction, finetuning, CSG training) "
                         f"and an eval part ({len(eval_ds)}: every accuracy); numbers are 'CIFAR-10 test[0:{len(full)}]', "
                         "not the full test set")
        else:
            fit_all = data.get_dataset(cfg.dataset, root, split="train", train_aug=False, **kw)
            fit_ds = _subset(fit_all, np.arange(len(fit_all)), cfg.max_fit_images, cfg.seed + 1)
            eval_name = "test" if cfg.dataset == "cifar10" else "val"
            eval_ds = data.get_dataset(cfg.dataset, root, split=eval_name, **kw)
            aug = data.get_dataset(cfg.dataset, root, split="train", train_aug=True, **kw)
            train = _subset(aug, np.arange(len(aug)), cfg.max_train_images, cfg.seed)
            name = {"cifar10": "CIFAR-10"}.get(cfg.dataset, cfg.dataset)
            fit_label = f"{name} train ({len(fit_ds)} images)"
            eval_label = f"{name} {eval_name} ({len(eval_ds)} images)"
        classes = [str(c) for c in getattr(eval_ds, "classes", getattr(getattr(eval_ds, "dataset", None), "classes", []))]
        model = models.build(cfg.model, len(classes))
        models.load_weights(model, weights)
        model.eval().to(pick_device(cfg.device))
        if cfg.dataset == "cifar10":
            notes.append(f"inputs normalised with {cfg.normalize} mean/std {data.normalization(cfg.normalize)}")
    reference = cfg.dataset == "cifar10" and cfg.model == "resnet20"
    S = Setup(cfg.model, model, classes, fit_ds, eval_ds, train, fit_label, eval_label, [x for x in notes if x],
              reference, all_label)
    tag = json.dumps({"model": cfg.model, "dataset": cfg.dataset, "root": str(root), "scale": cfg.scale,
                      "norm": cfg.normalize, "fit": cfg.fit_fraction, "seed": cfg.seed, "max_fit": cfg.max_fit_images})
    S.feats_fit = extract_features(model, fit_ds, device=cfg.device, progress=cfg.progress, cache_tag=tag + "fit")
    S.feats_eval = extract_features(model, eval_ds, device=cfg.device, progress=cfg.progress, cache_tag=tag + "eval")
    check_k_n(cfg.k, cfg.n, S.num_features)
    for n in cfg.n_grid:
        check_k_n(None, n, S.num_features)
    for k in cfg.k_grid:
        check_k_n(k, None, S.num_features)
    return S


def read_published(cfg: DecompositionConfig, S: Setup) -> dict[int, Indices]:
    """The published index files of `cfg.published_indices` ({n: path}), checked against the model."""
    out = {}
    for n, path in (cfg.published_indices or {}).items():
        out[int(n)] = read_indices(resolve_path(path), len(S.classes), S.num_features)
    return out


def index_table(index_sets: Mapping[str, Mapping], classes: Sequence[str]) -> pd.DataFrame:
    """Classes x methods: each method's feature indices per class."""
    return pd.DataFrame({name: [", ".join(map(str, idx[c])) for c in range(len(classes))]
                         for name, idx in index_sets.items()},
                        index=pd.Index(list(classes), name="class"))


def accuracy_table(S: Setup, index_sets: Mapping[str, Mapping]) -> pd.DataFrame:
    """Original and decomposed accuracy (%) on the eval and fit parts (and on both together when they
    are one test set split in two), beside the seed's full-test numbers for ResNet-20 / CIFAR-10."""
    lin = copy.deepcopy(S.linear).float().cpu()
    parts = {S.eval_label: S.feats_eval, S.fit_label: S.feats_fit}
    if S.all_label:
        parts[S.all_label] = Features(torch.cat([S.feats_fit.features, S.feats_eval.features]),
                                      torch.cat([S.feats_fit.logits, S.feats_eval.logits]),
                                      torch.cat([S.feats_fit.labels, S.feats_eval.labels]))
    heads = {"original": lin} | {f"decomposed: {name}": DecomposedHead.from_linear(lin, idx)
                                 for name, idx in index_sets.items()}
    rows = []
    for name, head in heads.items():
        row = {"model": name, "head weights": head.weight.numel()}
        row |= {f"acc (%) {label}": round(100 * head_accuracy(f, head), 2) for label, f in parts.items()}
        if S.reference:
            n = head.indices.shape[1] if isinstance(head, DecomposedHead) else None
            row["seed (full CIFAR-10 test)"] = (SEED_REFERENCE["original"] if n is None else
                                                SEED_REFERENCE["decomposed (n=5)"] if n == 5 else "-")
        rows.append(row)
    return pd.DataFrame(rows)


def run_finetune(S: Setup, indices: Mapping, cfg: DecompositionConfig) -> tuple[nn.Module, pd.DataFrame]:
    """`finetune` with the run's settings, checkpointed (and resumable) in the cache."""
    key = cache_key(model=weights_fingerprint(S.model), idx={str(c): v for c, v in indices.items()},
                    train=len(S.train_ds), label=S.fit_label, epochs=cfg.finetune_epochs, lr=cfg.lr,
                    batch=cfg.batch_size, seed=cfg.seed)
    net, hist = finetune(S.model, indices, S.train_ds, S.eval_ds, cfg.finetune_epochs, cfg.lr, cfg.batch_size,
                         cfg.seed, cfg.device, cfg.progress, out_dir=cache_dir("decompose", "finetune", key))
    table = pd.DataFrame({"epoch": hist["epoch"].astype(int),
                          f"decomposed acc (%) {S.eval_label}": (100 * hist["val_acc"]).round(2)})
    if S.reference:
        table["seed (full CIFAR-10 test)"] = [SEED_REFERENCE["decomposed (n=5)"]] + [
            SEED_REFERENCE["finetuned, 1 epoch"] if e == 1 else SEED_REFERENCE["finetuned, best"]
            for e in table["epoch"][1:]]
    return net, table


@dataclasses.dataclass
class CSGResult:
    """A CSG model, where it came from, its eval-part features and its training history (if trained)."""

    net: CSGNet
    source: str
    feats_eval: Features
    feats_fit: Features
    history: pd.DataFrame | None

    @property
    def linear(self) -> nn.Linear:
        return self.net.linear()


def csg_baseline(S: Setup, cfg: DecompositionConfig) -> CSGResult:
    """The CSG model: `cfg.csg_checkpoint` when given, else trained from the run's model (cached, resumable)."""
    history = None
    if cfg.csg_checkpoint is not None:
        path = resolve_path(cfg.csg_checkpoint)
        net = load_csg_checkpoint(path, cfg.model)
        C, D = net.gates.shape
        if (C, D) != (len(S.classes), S.num_features):
            raise DataError(path, f"gate matrix is {C} x {D}, the model has {len(S.classes)} classes x {S.num_features} features")
        source = f"checkpoint {path.name}"
    else:
        require(cfg.csg_epochs >= 1, "csg_epochs", "must be >= 1 when no csg_checkpoint is given")
        key = cache_key(model=weights_fingerprint(S.model), train=len(S.train_ds), label=S.fit_label, batch=cfg.batch_size,
                        epochs=cfg.csg_epochs, lr=cfg.csg_lr, l1=cfg.csg_lambda_1, l2=cfg.csg_lambda_2,
                        mult=cfg.csg_gate_lr_mult, seed=cfg.seed)
        folder = cache_dir("decompose", "csg", key)
        final = folder / "csg.pt"
        if final.exists():
            saved = torch.load(final, map_location="cpu", weights_only=False)
            net = CSGNet(copy.deepcopy(S.model).cpu(), gate_scale=saved["gate_scale"])
            net.load_state_dict(saved["state"])
            history = pd.DataFrame(saved["history"])
        else:
            net, history = train_csg(S.model, S.train_ds, S.eval_ds, cfg.csg_epochs, cfg.csg_lr, cfg.csg_lambda_1,
                                     cfg.csg_lambda_2, batch_size=cfg.batch_size, seed=cfg.seed, device=cfg.device,
                                     progress=cfg.progress, out_dir=folder, gate_lr_mult=cfg.csg_gate_lr_mult)
            from .runtime import atomic_save
            atomic_save({"state": {k: v.cpu() for k, v in net.state_dict().items()}, "gate_scale": net.gate_scale,
                         "history": history.to_dict("records")}, final)
            (folder / "checkpoint.pt").unlink(missing_ok=True)
        source = f"trained {cfg.csg_epochs} epoch(s) from the run's model on {S.fit_label}"
    net.eval().to(pick_device(cfg.device))
    fe = extract_features(net.net, S.eval_ds, device=cfg.device, progress=cfg.progress)
    ff = extract_features(net.net, S.fit_ds, device=cfg.device, progress=cfg.progress)
    return CSGResult(net, source, fe, ff, history)


def mi_over_n(S: Setup, csg: CSGResult | None, cfg: DecompositionConfig,
              published: Mapping[int, Indices] | None = None,
              extra: Mapping[str, Mapping] | None = None) -> pd.DataFrame:
    """MI (both conventions) for n in cfg.n_grid: ours, CSG largest gates, CSG smallest (legacy), published."""
    sets: dict[str, Mapping] = {}
    for n in sorted(set(cfg.n_grid) | {cfg.n}):
        sets[f"ours (k={cfg.k}, n={n})"], _ = influential_indices(
            S.feats_fit.features, S.feats_fit.labels, len(S.classes), cfg.k, n)
        if csg is not None:
            sets[f"CSG largest gates (n={n})"] = csg_indices(csg.net.gates, n, "largest")
            sets[f"CSG smallest gates, legacy (n={n})"] = csg_indices(csg.net.gates, n, "smallest")
        if published and n in published:
            sets[f"published ours (n={n})"] = published[n]
    for name, idx in (extra or {}).items():
        sets[name] = idx
    df = mi_table(sets, S.num_features)
    df["method"] = [("CSG" if name.startswith("CSG") or "CSG" in name else "ours") for name in df["indices"]]
    return df.sort_values(["n", "method", "indices"], kind="stable").reset_index(drop=True)


# ============================================================================ figures
def plot_frequencies(freq: np.ndarray, classes: Sequence[str], indices: Mapping | None = None, k: int | None = None,
                     title: str | None = None):
    """Heatmap classes x features of the top-k frequency histograms; the chosen S_c marked with dots."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    C, D = freq.shape
    fig, ax = plt.subplots(figsize=(min(18, 4 + D * 0.12), 1.2 + 0.35 * C))
    share = freq / np.maximum(freq.sum(1, keepdims=True), 1) * (k or 1)
    sns.heatmap(share, ax=ax, cmap="viridis", cbar_kws={"label": "fraction of the class's images with the feature in top-k"},
                yticklabels=list(classes), xticklabels=max(1, D // 16))
    if indices is not None:
        for c, vals in check_indices(indices, equal_sizes=False).items():
            ax.scatter(np.asarray(vals) + 0.5, np.full(len(vals), c + 0.5), s=10, c="red", marker="o")
    ax.set_xlabel("feature index (pooled channel)")
    ax.set_ylabel("class")
    ax.set_title(title or f"Top-{k} frequency per class (red: the chosen S_c)")
    fig.tight_layout()
    return fig


def plot_k_sweep(df: pd.DataFrame, original: float, label: str):
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(6, 3.6))
    sns.lineplot(data=df, x="k", y="decomposed acc (%)", hue="n", marker="o", ax=ax, palette="deep")
    ax.axhline(100 * original, color="k", ls="--", lw=1, label="original")
    ax.set_xlabel("k (top features per image)")
    ax.set_ylabel(f"accuracy (%), {label}")
    ax.set_title("Decomposed accuracy versus k")
    ax.legend(title="n")
    fig.tight_layout()
    return fig


def plot_finetune(table: pd.DataFrame, original: float):
    import matplotlib.pyplot as plt

    col = [c for c in table.columns if c.startswith("decomposed acc")][0]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(table["epoch"], table[col], marker="o", label="decomposed, finetuned")
    ax.axhline(100 * original, color="k", ls="--", lw=1, label="original")
    ax.set_xlabel("finetuning epoch (0 = before)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(col.replace("decomposed acc (%) ", "Finetuning, "), fontsize=9)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_essentiality(table: pd.DataFrame, title: str):
    """Bars per class: images still correct under noise, per method and noise location."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = table.copy()
    df["run"] = df["method"] + ", noise at " + df["noise at"]
    df["still correct (%)"] = 100 * df["correct with noise"] / df["images"].clip(lower=1)
    fig, ax = plt.subplots(figsize=(max(7, 0.8 * df["class"].nunique() + 3), 4))
    sns.barplot(data=df, x="class", y="still correct (%)", hue="run", ax=ax, palette="Paired")
    ax.set_xlabel("class")
    ax.set_ylabel("images still correct (%)")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="indices, noise location")
    fig.tight_layout()
    return fig
