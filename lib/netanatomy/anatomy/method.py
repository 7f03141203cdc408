"""One model, several lenses: the methods' class unit-sets, their agreement, their causal weight and
their concepts against the planted truth (ours; no paper defines this comparison).

For a class c and a layer L with D channels, a method gives a unit set U_c ⊆ {0..D-1}:

- NAD: the channels whose gate logit is > 0 on c's path (`nad.method.PathResult.hard`).
- Decomposing the Deep: S_c, the n features most often among an image's top-k over c's images
  (`decompose.method.influential_indices`), at the features entering the head.
- DKA: the K units with the largest mean contribution f_i * W[c, i] over c's images
  (`dka.method.unit_contributions`), at the same features.

Agreement of two sets: Jaccard J(A, B) = |A ∩ B| / |A ∪ B|, against the mean J of random sets of the
same sizes. Causal check: zero the channels of U_c at L (`ablate`) and measure accuracy on class c
and on the other classes; at the features entering the head, zeroing unit i sets f_i = 0, so the
logits are W f + b restricted to the kept units (`masked_logits`); zeroing every unit leaves b
(the bias-only answer). Concepts: a set's concepts are the dissection labels (IoU >= threshold) of
its units; against a class's planted defining concepts D_c, precision = |concepts ∩ D_c| / |concepts|
and recall = |concepts ∩ D_c| / |D_c|.

The heterogeneity lens is class-agnostic: per layer l of the baseline, the share of the widened width
the LW-DNA keeps, w_l = kept_l / widened_l, against the share of the baseline's units that are
detectors, d_l. Their agreement is Spearman's rank correlation rho over the layers, with a Fisher-z
interval, z = atanh(rho) ± z_(1-a/2) sqrt(1.06 / (n - 3)) (Fieller, Hartley and Pearson 1957), and
the exact permutation p-value (two-sided: the share of the n! orders of d with |rho| >= the observed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import permutations

import numpy as np
import pandas as pd
import torch
from scipy import stats as scipy_stats
from torch import nn
from torch.utils.data import DataLoader

from .. import world
from ..broden import WORLD_LAYOUT
from ..decompose.method import influential_indices
from ..errors import ParamError
from ..hooks import channel_gates
from ..nad.method import PathResult
from ..runtime import pick_device
from ..stats import Interval

#: Unit sets of one method at one layer: class index -> sorted channel indices.
UnitSets = dict[int, list[int]]


# ----------------------------------------------------------------------------- unit-set readers

def nad_sets(paths: PathResult, layer: str) -> UnitSets:
    """Each searched class's kept channels (gate logit > 0) at `layer` of a NAD path result."""
    if layer not in paths.logits:
        raise ParamError("layer", f"{layer!r} is not a layer of the NAD paths; searched: {', '.join(paths.layers)}")
    hard = paths.hard()[layer]
    return {c: np.flatnonzero(hard[r].numpy()).tolist() for r, c in enumerate(paths.classes)}


def decomposition_sets(features: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int, n: int) -> UnitSets:
    """S_c of Decomposing the Deep: the n features most often in an image's top-k over class c."""
    indices, _ = influential_indices(features, labels, num_classes, k, n)
    return {c: sorted(v) for c, v in indices.items()}


def dka_sets(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, k: int) -> UnitSets:
    """DKA's top-K contributors of each class: the K units with the largest mean contribution
    f_i * W[c, i] over the images of class c (the contribution of `dka.method.unit_contributions`,
    from pooled `features` (N, D) and the head's `weight` (C, D))."""
    if not 1 <= k <= features.shape[1]:
        raise ParamError("dka_k", f"must be between 1 and the number of units {features.shape[1]}, got {k}")
    out = {}
    for c in range(weight.shape[0]):
        rows = features[labels == c]
        if not len(rows):
            raise ParamError("classes", f"class {c} has no images to rank contributions on")
        out[c] = sorted((rows.float().mean(0) * weight[c].float()).topk(k).indices.tolist())
    return out


def random_sets(sizes: Mapping[int, int], num_units: int, rng: np.random.Generator) -> UnitSets:
    """For each class, a uniformly random set of the given size."""
    return {c: sorted(rng.choice(num_units, size=s, replace=False).tolist()) for c, s in sizes.items()}


# ----------------------------------------------------------------------------- agreement

def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    """|A ∩ B| / |A ∪ B| (1 for two empty sets)."""
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def random_jaccard(size_a: int, size_b: int, num_units: int, draws: int, rng: np.random.Generator) -> float:
    """Mean Jaccard of two independent random sets of sizes `size_a` and `size_b` out of `num_units`."""
    return float(np.mean([jaccard(rng.choice(num_units, size_a, replace=False),
                                  rng.choice(num_units, size_b, replace=False)) for _ in range(draws)]))


def overlap_share(units: Sequence[int], group: Sequence[int]) -> float:
    """Share of `units` that lie in `group` (0 for an empty set)."""
    return len(set(units) & set(group)) / len(units) if len(units) else 0.0


# ----------------------------------------------------------------------------- ablation

def masked_logits(features: torch.Tensor, head: nn.Linear, units: Sequence[int]) -> torch.Tensor:
    """Logits with the pooled features `units` zeroed: the exact ablation at the layer feeding the head."""
    f = features.float().clone()
    f[:, list(units)] = 0
    with torch.no_grad():
        return head.float().cpu()(f)


@torch.no_grad()
def ablate(model: nn.Module, layer: str, units: Sequence[int], dataset, batch_size: int = 256,
           device: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions, labels) over `dataset` with the output channels `units` of `layer` set to zero."""
    dev = pick_device(device)
    model.eval().to(dev)
    preds, labels = [], []
    gate = None
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = batch[0].to(dev)
        if gate is None:
            with channel_gates(model, {}, capture=[layer]) as t:
                model(x[:1])
            gate = torch.ones(t[layer].shape[1], device=dev)
            if units and max(units) >= len(gate):
                raise ParamError("units", f"{layer} has {len(gate)} channels, got unit {max(units)}")
            gate[list(units)] = 0
        with channel_gates(model, {layer: gate}):
            preds.append(model(x).argmax(1).cpu())
        labels.append(torch.as_tensor(batch[1]).long())
    return torch.cat(preds), torch.cat(labels)


def class_drops(pred_base: torch.Tensor, pred_ablated: torch.Tensor, labels: torch.Tensor, c: int) -> tuple[float, float]:
    """(drop of class c's accuracy, drop of the other classes' accuracy) from ablating a set."""
    own, rest = labels == c, labels != c
    ok0, ok1 = (pred_base == labels).float(), (pred_ablated == labels).float()
    return float(ok0[own].mean() - ok1[own].mean()), float(ok0[rest].mean() - ok1[rest].mean())


# ----------------------------------------------------------------------------- concepts and planted truth

def set_concepts(units: Sequence[int], labels: pd.DataFrame) -> set[tuple[str, str]]:
    """(category, concept) of the detectors among `units` (`labels`: a `LayerDissection.unit_labels()`)."""
    rows = labels[labels["unit"].isin(list(units)) & labels["detector"]]
    return set(zip(rows["category"], rows["concept"]))


def defining_concepts(class_names: Sequence[str]) -> dict[int, set[tuple[str, str]]]:
    """Per class index, the (category, Broden label) pairs the concept world plants for that scene
    (`world.scene_concepts`, named as in the world's Broden export, e.g. 'red-c', 'beach-s')."""
    unknown = [n for n in class_names if n not in world.SCENES]
    if unknown:
        raise ParamError("classes", f"{unknown[0]!r} is not a concept-world scene; planted truth exists only there")
    return {c: {(cat, name + WORLD_LAYOUT[cat][2]) for cat, names in world.scene_concepts(n).items()
                for name in names} for c, n in enumerate(class_names)}


def precision_recall(found: set, truth: set) -> tuple[float, float]:
    """(share of `found` in `truth`, share of `truth` found); NaN precision when nothing was found."""
    hit = len(found & truth)
    return (hit / len(found) if found else float("nan")), (hit / len(truth) if truth else float("nan"))


# ----------------------------------------------------------------------------- heterogeneity lens

#: Layers up to which the permutation p-value enumerates every order (8! = 40,320); beyond, random orders.
EXACT_PERMUTATIONS = 8


def rank_correlation(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> Interval:
    """Spearman's rho of `x` and `y` (ties ranked by their mean rank) with its Fisher-z interval
    (standard error sqrt(1.06 / (n - 3)), Fieller, Hartley and Pearson 1957); needs n >= 4 pairs."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or len(x) < 4:
        raise ParamError("layers", f"a rank correlation needs at least 4 pairs, got {len(x)} and {len(y)} values")
    rho = _spearman(x, y)
    z = np.arctanh(np.clip(rho, -0.999999, 0.999999))
    half = scipy_stats.norm.ppf(0.5 + confidence / 2) * np.sqrt(1.06 / (len(x) - 3))
    return Interval(rho, float(np.tanh(z - half)), float(np.tanh(z + half)), len(x), confidence)


def permutation_p(x: Sequence[float], y: Sequence[float], draws: int = 20_000, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman's rho: the share of orders of `y` whose |rho| reaches the
    observed one (every order up to `EXACT_PERMUTATIONS` pairs, else `draws` random orders and the observed)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    observed = abs(_spearman(x, y)) - 1e-12
    if len(y) <= EXACT_PERMUTATIONS:
        orders = (list(p) for p in permutations(range(len(y))))
        return float(np.mean([abs(_spearman(x, y[o])) >= observed for o in orders]))
    rng = np.random.default_rng(seed)
    hits = sum(abs(_spearman(x, rng.permutation(y))) >= observed for _ in range(draws))
    return (hits + 1) / (draws + 1)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (0 when either side is constant: no order to agree with)."""
    rx, ry = scipy_stats.rankdata(x), scipy_stats.rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])
