"""The decomposition notebook's tables, computed from a `run.Setup`'s features and index sets
(nothing here is cached or trained): index sets, k sweep, accuracy, head size, essentiality, the
random controls with their intervals and verdicts, and mutual information.
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from torch import nn

from ..stats import mean_interval, paired_interval
from . import csg as csg_math, method
from .method import DecomposedHead, Features, Indices, check_indices
from .run import SEED_COLUMN, Config, CSGResult, Setup


# ============================================================================ index sets and accuracy
def named_index_sets(ours: Indices, published: Mapping[int, Indices], cfg: Config) -> dict[str, Indices]:
    """Our index sets and the published ones, named for tables."""
    return {f"ours (k={cfg.k}, n={cfg.n})": ours} | {f"published (n={m})": idx for m, idx in published.items()}


def overlap(a: Mapping, b: Mapping) -> pd.DataFrame:
    """Per class: |S_a & S_b| and the Jaccard index of two index-set collections."""
    a, b = check_indices(a, equal_sizes=False), check_indices(b, equal_sizes=False)
    rows = []
    for c in a:
        sa, sb = set(a[c]), set(b.get(c, []))
        rows.append({"class": c, "shared": len(sa & sb), "jaccard": len(sa & sb) / max(len(sa | sb), 1)})
    return pd.DataFrame(rows)


OVERLAP_CLAIM = "our indices share more with the published ones than random sets of the same size would"


def overlap_table(S: Setup, published: Mapping[int, Indices], cfg: Config) -> pd.DataFrame:
    """Our indices against each published file of n indices per class: extracted on the fit part with
    k = n (upstream's file names pair them: `_10_10`, `_20_20`) and with cfg.k, and, as a diagnostic
    of the data's influence (not the protocol), on the eval part with k = n. Per row: the indices
    shared out of C * n, the mean Jaccard index, and per class the excess over chance,
    shared - n^2 / D (the expected overlap of a random n-set with a fixed one), with its 95 %
    interval over classes."""
    rows = []
    for n, theirs in published.items():
        runs = [(S.fit_label, S.feats_fit, k) for k in sorted({n, cfg.k})] + [(S.eval_label, S.feats_eval, n)]
        for label, feats, k in runs:
            ours, _ = method.influential_indices(feats.features, feats.labels, len(S.classes), k, n)
            per_class = overlap(ours, theirs)
            chance = n * n / S.num_features
            iv = mean_interval(per_class["shared"].to_numpy() - chance)
            rows.append({"published n": n, "our k": k, "extracted on": label, "shared": int(per_class["shared"].sum()),
                         "of": n * len(S.classes), "chance": round(chance * len(S.classes), 2),
                         "mean jaccard": round(per_class["jaccard"].mean(), 3), "excess per class": round(iv.mean, 2),
                         "95% low": round(iv.low, 2), "95% high": round(iv.high, 2),
                         "unit": f"{len(S.classes)} classes", "verdict": iv.verdict()})
    return pd.DataFrame(rows)


def index_table(index_sets: Mapping[str, Mapping], classes: Sequence[str]) -> pd.DataFrame:
    """Classes x methods: each method's feature indices per class."""
    return pd.DataFrame({name: [", ".join(map(str, idx[c])) for c in range(len(classes))]
                         for name, idx in index_sets.items()},
                        index=pd.Index(list(classes), name="class"))


def k_sweep(S: Setup, cfg: Config) -> pd.DataFrame:
    """Decomposed accuracy (%) on the eval part of indices extracted on the fit part, for each k and n."""
    linear = copy.deepcopy(S.linear).float().cpu()
    rows = []
    for n in cfg.n_grid:
        for k in cfg.k_grid:
            idx, _ = method.influential_indices(S.feats_fit.features, S.feats_fit.labels, len(S.classes), k, n)
            rows.append({"n": n, "k": k, "decomposed acc (%)": 100 * method.head_accuracy(
                S.feats_eval, DecomposedHead.from_linear(linear, idx))})
    return pd.DataFrame(rows)


def k_sweep_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """The k sweep as k x n (accuracy rounded to 0.01)."""
    return sweep.pivot(index="k", columns="n", values="decomposed acc (%)").round(2)


def accuracy_table(S: Setup, index_sets: Mapping[str, Mapping]) -> pd.DataFrame:
    """Original and decomposed accuracy (%) on the eval and fit parts (and on both together when they
    are one test set split in two), the Student t interval over the eval images (a fixed model: the
    images are the unit), beside the seed's full-test targets for ResNet-20 / CIFAR-10."""
    lin = copy.deepcopy(S.linear).float().cpu()
    parts = {S.eval_label: S.feats_eval, S.fit_label: S.feats_fit}
    if S.all_label:
        parts[S.all_label] = Features.concat([S.feats_fit, S.feats_eval])
    heads = {"original": lin} | {f"decomposed: {name}": DecomposedHead.from_linear(lin, idx)
                                 for name, idx in index_sets.items()}
    seed = method.SEED_REFERENCE
    rows = []
    for name, head in heads.items():
        row = {"model": name, "head weights": head.weight.numel()}
        row |= {f"acc (%) {label}": round(100 * method.head_accuracy(f, head), 2) for label, f in parts.items()}
        iv = mean_interval(100 * method.correct(S.feats_eval, head).float().numpy())
        row["95% interval, eval images"] = f"[{iv.low:.1f}, {iv.high:.1f}]"
        if S.reference:
            n = head.indices.shape[1] if isinstance(head, DecomposedHead) else None
            row[SEED_COLUMN] = seed["original"] if n is None else seed["decomposed (n=5)"] if n == 5 else "-"
        rows.append(row)
    return pd.DataFrame(rows)


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


# ============================================================================ essentiality
Run = tuple[Features, nn.Linear, Indices]


def index_runs(S: Setup, csg: CSGResult | None, ours: Indices, published: Mapping[int, Indices],
               csg_sets: Mapping[str, Indices], cfg: Config) -> dict[str, Run]:
    """The index sets the essentiality and control studies compare, each with its own model's
    eval-part features and linear layer: ours, the published n = cfg.n file (if any), CSG's largest
    gates and CSG's smallest gates (upstream's legacy), when the run has CSG."""
    runs = {f"ours (k={cfg.k}, n={cfg.n})": (S.feats_eval, S.linear, ours)}
    if cfg.n in published:
        runs[f"published (n={cfg.n})"] = (S.feats_eval, S.linear, published[cfg.n])
    if csg is not None:
        runs[f"CSG largest gates (n={cfg.n})"] = (csg.feats_eval, csg.linear, csg_sets["CSG largest gates"])
        runs[f"CSG smallest gates, legacy (n={cfg.n})"] = (csg.feats_eval, csg.linear,
                                                            csg_sets["CSG smallest gates (legacy)"])
    return runs


def essentiality_table(runs: Mapping[str, Run], mode: str = "replace", scale: float = 1.0, seed: int = 0,
                       class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Long table over methods x {influential, non_influential} x classes (same seed for every run)."""
    parts = []
    for name, (feats, linear, idx) in runs.items():
        for where in ("influential", "non_influential"):
            df = method.essentiality(feats, linear, idx, where, mode, scale, seed, class_names=class_names)
            df.insert(0, "noise at", where.replace("_", "-"))
            df.insert(0, "method", name)
            parts.append(df)
    return pd.concat(parts, ignore_index=True)


def essentiality_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (%) clean and with noise, per method and noise location (all classes together)."""
    g = table.groupby(["method", "noise at"], sort=False)[["images", "correct clean", "correct with noise"]].sum()
    return pd.DataFrame({"clean acc (%)": 100 * g["correct clean"] / g["images"],
                         "acc with noise (%)": 100 * g["correct with noise"] / g["images"]}).round(2)


# ============================================================================ random controls
#: The comparisons against controls: claim -> (arm A, arm B) of `method.ControlDraws` with their
#: names; the difference is A - B (points of accuracy).
COMPARISONS = {
    "decomposed head beats random sets of the same size":
        (("decomposed", "decomposed acc (%) with the sets"), ("decomposed_random", "with random sets")),
    "noise at the sets costs more than noise at random sets of the same size":
        (("noise_random", "acc (%) with noise at random sets"), ("noise_sets", "with noise at the sets")),
    "noise at the n set features costs more than noise at the D - n others":
        (("noise_others", "acc (%) with noise at the others"), ("noise_sets", "with noise at the sets")),
}
MI_CLAIM = "the sets overlap less than random sets (lower MI, distinct class pairs)"


def control_study(runs: Mapping[str, Run], cfg: Config) -> pd.DataFrame:
    """Each index-set collection against its controls, with a 95 % interval and a verdict per claim.

    Accuracy claims: the unit is the eval image (the model and the sets are fixed); per image the
    outcome is averaged over cfg.n_random random sets / noise draws, and the interval is the paired
    Student t interval over images of A - B (points). MI claim: the unit is the distinct class pair,
    the interval is over pairs of (MI of random sets, averaged over the draws) - (MI of the sets).
    "draws <= 0" counts the draws whose difference over all images (pairs) is not above zero.
    """
    rows = []
    for name, (feats, linear, sets) in runs.items():
        d = method.control_draws(feats, linear, sets, cfg.n_random, cfg.seed, cfg.noise, cfg.noise_scale)
        for claim, ((a_key, a_name), (b_key, b_name)) in COMPARISONS.items():
            a, b = getattr(d, a_key), getattr(d, b_key)
            iv = paired_interval(100 * a.mean(0).numpy(), 100 * b.mean(0).numpy())
            per_draw = (a.mean(1) - b.mean(1)).numpy()
            rows.append({"indices": name, "claim": claim, "A": a_name, "A mean": 100 * a.mean().item(),
                         "B": b_name, "B mean": 100 * b.mean().item(), "difference": iv.mean, "95% low": iv.low,
                         "95% high": iv.high, "unit": f"{a.shape[1]} images",
                         "draws <= 0": f"{int((per_draw <= 0).sum())} of {len(per_draw)}", "verdict": iv.verdict()})
        pairs = np.triu(np.ones_like(d.mi_random, dtype=bool), 1)
        own = method.pairwise_mutual_information(sets, linear.weight.shape[1])[pairs]
        iv = mean_interval(d.mi_random[pairs] - own)
        rows.append({"indices": name, "claim": MI_CLAIM, "A": "MI of random sets", "A mean": float(d.mi_random[pairs].mean()),
                     "B": "MI of the sets", "B mean": float(own.mean()), "difference": iv.mean, "95% low": iv.low,
                     "95% high": iv.high, "unit": f"{int(pairs.sum())} class pairs",
                     "draws <= 0": f"{int((d.mi_draws <= own.mean()).sum())} of {len(d.mi_draws)}",
                     "verdict": iv.verdict()})
    return pd.DataFrame(rows)


# ============================================================================ mutual information
MI_COLUMNS = {True: "MI incl. self-pairs (upstream)", False: "MI distinct pairs"}


def mi_table(index_sets: Mapping[str, Mapping], num_features: int) -> pd.DataFrame:
    """MI of each named index-set collection under both conventions."""
    rows = []
    for name, idx in index_sets.items():
        n = len(next(iter(check_indices(idx, equal_sizes=False).values())))
        rows.append({"indices": name, "n": n} | {column: method.mean_mutual_information(idx, num_features, self_pairs)
                                                 for self_pairs, column in MI_COLUMNS.items()})
    return pd.DataFrame(rows)


def mi_over_n(S: Setup, csg: CSGResult | None, cfg: Config, published: Mapping[int, Indices] | None = None,
              csg_file: Indices | None = None) -> pd.DataFrame:
    """MI (both conventions) for n in cfg.n_grid and cfg.n: ours, CSG largest gates, CSG smallest
    (legacy), the published files, and the published CSG file (when given)."""
    sets: dict[str, Mapping] = {}
    for n in sorted(set(cfg.n_grid) | {cfg.n}):
        sets[f"ours (k={cfg.k}, n={n})"], _ = method.influential_indices(
            S.feats_fit.features, S.feats_fit.labels, len(S.classes), cfg.k, n)
        if csg is not None:
            sets[f"CSG largest gates (n={n})"] = csg_math.csg_indices(csg.net.gates, n, "largest")
            sets[f"CSG smallest gates, legacy (n={n})"] = csg_math.csg_indices(csg.net.gates, n, "smallest")
        if published and n in published:
            sets[f"published ours (n={n})"] = published[n]
    if csg_file is not None:
        sets[f"CSG published file (legacy, n={len(csg_file[0])})"] = csg_file
    df = mi_table(sets, S.num_features)
    df["method"] = ["CSG" if "CSG" in name else "ours" for name in df["indices"]]
    return df.sort_values(["n", "method", "indices"], kind="stable").reset_index(drop=True)
