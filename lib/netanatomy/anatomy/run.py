"""The anatomy notebook's run: one shared model, the methods' class unit-sets read from the method
notebooks' cached results, and the comparison tables.

- `Config`: which NAD and dissection parameter sets to read (their runs define the shared model and
  data, and their caches are reused: same parameters, same cache entries), the compared layer,
  decomposition's k and n, DKA's K, the random controls, and the heterogeneity set of the lens.
- `study(cfg)`: the subject, the NAD paths (`nad.run.find_paths`, cached), the dissection
  (`dissect.run.study`, cached), the pooled features of the fit and evaluation images (cached here),
  and every method's unit sets at the compared layer.
- Tables: `sizes`, `agreement`, `ablation` (+ `ablation_summary`), `concept_counts`, `truth_table`,
  `truth_summary`, `ranking` (per question, first against runner-up by a paired interval over classes);
  `detectors_per_layer` for the per-layer view.
- The heterogeneity lens (class-agnostic): `hetero_lens(cfg)` reads the first seed's trained baseline and
  LW-DNAs of the `hetero_params` run from its cache and dissects the baseline's layers (`lens_layers`) on
  that run's concept world exported as Broden; `width_detector_table` and `width_detector_summary` set
  each layer's kept width share against its share of detectors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from .. import cache, data, models, params
from ..config import RunConfig, integer, optional, param, text
from ..decompose.method import Features, extract_features
from ..dissect import run as dissect_run
from ..errors import DataError, ParamError
from ..hetero import method as hetero_method
from ..hetero import networks
from ..hetero import run as hetero_run
from ..hetero.networks import Arch
from ..nad import run as nad_run
from ..runtime import resolve_path, weights_fingerprint
from ..stats import mean_interval, paired_interval
from ..world import SCENES
from . import method

#: The NAD notebooks whose parameter sets name one model.
NAD_NOTEBOOKS = ("nad_findpath", "nad_subarch")


def read_set(path: str | Path, param_name: str) -> dict:
    """A method notebook's parameters: the defaults of the notebook the set is for (its name's first part,
    e.g. nad_subarch for nad_subarch.cifar10_resnet20.yaml) overlaid by the YAML parameter set at `path`."""
    path = resolve_path(path)
    if not path.is_file():
        raise ParamError(param_name, f"parameter set {path} not found")
    given = yaml.safe_load(path.read_text()) or {}
    if not isinstance(given, dict):
        raise DataError(path, "does not hold a mapping of parameter names to values", expected="name: value lines")
    return params.with_defaults(path.name.split(".")[0], given)


@dataclasses.dataclass
class Config(RunConfig):
    """The anatomy notebook's parameters (every value checked before any work)."""

    nad_params: str = param("params/nad_findpath.yaml", text(),
                            "NAD parameter set whose paths are read (its model and data are the shared ones)")
    dissection_params: str = param("params/dissection.yaml", text(), "dissection parameter set whose labels are read")
    layer: str | None = param(None, optional(text()), "compared layer (None: the model's last preset layer)")
    k: int = param(5, integer(1), "decomposition: top-k features per image counted")
    n: int = param(5, integer(1), "decomposition: size of S_c")
    dka_k: int = param(5, integer(1), "DKA: top-K contributors per class")
    fit_images: int = param(1000, integer(10), "training images the decomposition and DKA sets are computed on")
    n_random: int = param(100, integer(2), "random sets of the same size per class and method")
    hetero_params: str | None = param("params/heterogeneity.yaml", optional(text()),
                                      "heterogeneity parameter set (concept world) whose first seed's baseline and "
                                      "LW-DNAs are read for the heterogeneity lens (None: lens skipped)")

    def validate(self) -> None:
        for name, notebooks in (("nad_params", NAD_NOTEBOOKS), ("dissection_params", ("dissection",))):
            if Path(getattr(self, name)).name.split(".")[0] not in notebooks:
                raise ParamError(name, f"must be a parameter set of {' or '.join(notebooks)} (one model), "
                                       f"got {getattr(self, name)}")
        nad = {k: v for k, v in read_set(self.nad_params, "nad_params").items()
               if k in nad_run.OneModelConfig.names()}
        self.nad = nad_run.OneModelConfig.from_params(nad)
        given = read_set(self.dissection_params, "dissection_params")
        self.dissection = dissect_run.Config.from_params({**given, "progress": self.progress, "device": self.device})
        for name in ("model", "weights", "scale"):
            if getattr(self.nad, name) != getattr(self.dissection, name):
                raise ParamError("dissection_params", f"{name} {getattr(self.dissection, name)!r} differs from the "
                                                      f"NAD set's {getattr(self.nad, name)!r}: both must read one model")
        self.nad = self.nad.replace(progress=self.progress, device=self.device)
        self.hetero = None if self.hetero_params is None else self._hetero_config()
        bare = models.build(self.nad.model, 2)  # layer names only: checked before any model is trained or loaded
        self.layer = self.layer or models.layers(self.nad.model, "last")[0]
        for name, layers in (("NAD", "nad"), ("dissection", self.dissection.layers)):
            have = models.resolve_layers(bare, self.nad.model, layers)
            if self.layer not in have:
                raise ParamError("layer", f"{self.layer!r} is not a layer of the {name} run; it has {', '.join(have)}")

    def _hetero_config(self) -> hetero_run.Config:
        if Path(self.hetero_params).name.split(".")[0] != "heterogeneity":
            raise ParamError("hetero_params", f"must be a parameter set of heterogeneity, got {self.hetero_params}")
        given = read_set(self.hetero_params, "hetero_params")
        cfg = hetero_run.Config.from_params({**given, "progress": self.progress, "device": self.device})
        if cfg.dataset != "concept_world":
            raise ParamError("hetero_params", f"the lens dissects the baseline on its own concept world; "
                                              f"{self.hetero_params} trains on {cfg.dataset!r}")
        return cfg


@dataclasses.dataclass
class Study:
    """What the anatomy notebook compares: the subject, the compared layer, each method's sets there,
    the dissection labels, the fit / evaluation features."""

    subject: object
    layer: str
    sets: dict[str, method.UnitSets]
    labels: dict[str, pd.DataFrame]
    fit: Features
    eval: Features
    head: torch.nn.Linear

    @property
    def classes(self) -> list[str]:
        return self.subject.classes

    @property
    def units(self) -> int:
        return self.head.weight.shape[1]

    @property
    def planted(self) -> bool:
        return self.subject.data.world is not None and list(self.classes) == list(SCENES)


def _features(S, split: str, limit: int | None, cfg: Config, label: str) -> Features:
    ds = S.data.split(split)
    if limit is not None and limit < len(ds):
        ds = data.Subset(ds, np.sort(np.random.default_rng(cfg.seed).choice(len(ds), limit, replace=False)))
    path = cache.entry(("anatomy", "features"), split, model=weights_fingerprint(S.model), data=S.data.key(),
                       limit=limit, seed=cfg.seed)
    return cache.cached(path, lambda _: extract_features(S.model, ds, device=cfg.device, progress=cfg.progress),
                        load=lambda d: Features(**d), dump=dataclasses.asdict, label=label)


def study(cfg: Config) -> Study:
    """Load the shared model and every method's unit sets at the compared layer (cached results reused)."""
    S = nad_run.subject_for(cfg.nad, cfg.nad.model)
    layer = cfg.layer
    paths = nad_run.find_paths(S, cfg.nad)
    dissection = dissect_run.study(cfg.dissection)
    fit = _features(S, "train", cfg.fit_images, cfg, "anatomy: fit features")
    ev = _features(S, "val", None, cfg, "anatomy: evaluation features")
    _, head = models.head(S.model)
    if ev.features.shape[1] != len(dissection.results[layer].unit_labels()):
        raise ParamError("layer", f"{layer!r} does not feed the head: its channels differ from the head's inputs")
    C = len(S.classes)
    sets = {"NAD": method.nad_sets(paths, layer),
            "decomposition": method.decomposition_sets(fit.features, fit.labels, C, cfg.k, cfg.n),
            "DKA": method.dka_sets(fit.features, fit.labels, head.weight.detach().cpu(), cfg.dka_k)}
    labels = {name: res.unit_labels() for name, res in dissection.results.items()}
    return Study(S, layer, sets, labels, fit, ev, head.cpu())


# ----------------------------------------------------------------------------- tables

def sizes(st: Study) -> pd.DataFrame:
    """Set size per class and method at the compared layer."""
    return pd.DataFrame({m: [len(st.sets[m].get(c, [])) for c in range(len(st.classes))] for m in st.sets},
                        index=pd.Index(st.classes, name="class"))


def _rng(cfg: Config, *salt: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, *salt])


def agreement(st: Study, cfg: Config) -> pd.DataFrame:
    """Per method pair: mean Jaccard over classes, the mean of random sets of the same sizes, and the
    interval of the paired difference (classes are the unit of replication, one fixed model)."""
    rows = []
    names = list(st.sets)
    for i, a in enumerate(names):
        for j, b in enumerate(names[i + 1:], i + 1):
            rng = _rng(cfg, i, j)
            got = [method.jaccard(st.sets[a][c], st.sets[b][c]) for c in range(len(st.classes))]
            rnd = [method.random_jaccard(len(st.sets[a][c]), len(st.sets[b][c]), st.units, cfg.n_random, rng)
                   for c in range(len(st.classes))]
            iv = paired_interval(got, rnd)
            rows.append({"pair": f"{a} / {b}", "jaccard": np.mean(got), "random": np.mean(rnd),
                         "difference": str(iv), "verdict (above random)": iv.verdict()})
    return pd.DataFrame(rows)


def ablation(st: Study, cfg: Config) -> pd.DataFrame:
    """Per method and class: the drop of class c's accuracy and of the other classes' when the set is
    zeroed at the compared layer, and the same for the mean of `n_random` random sets of its size."""
    base = st.eval.logits.argmax(1)
    y = st.eval.labels
    rows = []
    for m_i, (m, sets) in enumerate(st.sets.items()):
        rng = _rng(cfg, 100 + m_i)
        for c, units in sets.items():
            own, rest = method.class_drops(base, method.masked_logits(st.eval.features, st.head, units).argmax(1), y, c)
            rand = np.array([method.class_drops(base, method.masked_logits(
                st.eval.features, st.head, r[c]).argmax(1), y, c)
                for r in (method.random_sets({c: len(units)}, st.units, rng) for _ in range(cfg.n_random))])
            rows.append({"method": m, "class": st.classes[c], "size": len(units), "own drop": own,
                         "other drop": rest, "random own drop": rand[:, 0].mean(),
                         "random other drop": rand[:, 1].mean()})
    return pd.DataFrame(rows)


def ablation_summary(abl: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean set size, own-class drop and its excess over random sets (interval over classes),
    the other classes' drop, and the own drop per unit removed."""
    rows = []
    for m, g in abl.groupby("method", sort=False):
        iv = paired_interval(g["own drop"], g["random own drop"])
        spec = mean_interval(g["own drop"] - g["other drop"])
        rows.append({"method": m, "mean size": g["size"].mean(), "own drop": g["own drop"].mean(),
                     "own drop - random": str(iv), "necessary (above random)": iv.verdict(),
                     "other drop": g["other drop"].mean(), "own - other": str(spec),
                     "specific": spec.verdict(), "own drop per unit": (g["own drop"] / g["size"].clip(lower=1)).mean()})
    return pd.DataFrame(rows)


def concept_counts(st: Study, m: str) -> pd.DataFrame:
    """Class x concept counts of the detectors in method `m`'s sets (concept as 'category:name')."""
    lab = st.labels[st.layer]
    counts = {}
    for c, units in st.sets[m].items():
        rows = lab[lab["unit"].isin(units) & lab["detector"]]
        counts[st.classes[c]] = (rows["category"] + ":" + rows["concept"]).value_counts()
    return pd.DataFrame(counts).T.reindex(st.classes).fillna(0).astype(int)


def truth_table(st: Study, cfg: Config) -> pd.DataFrame:
    """Per method and class: precision and recall of the set's concept labels against the planted
    defining concepts, with random sets of the same size as the control."""
    if not st.planted:
        raise ParamError("nad_params", "planted truth exists only for the built-in concept world")
    truth = method.defining_concepts(st.classes)
    lab = st.labels[st.layer]
    rows = []
    for m_i, (m, sets) in enumerate(st.sets.items()):
        rng = _rng(cfg, 200 + m_i)
        for c, units in sets.items():
            p, r = method.precision_recall(method.set_concepts(units, lab), truth[c])
            rand = np.array([method.precision_recall(method.set_concepts(rs[c], lab), truth[c])
                             for rs in (method.random_sets({c: len(units)}, st.units, rng) for _ in range(cfg.n_random))])
            rows.append({"method": m, "class": st.classes[c], "precision": p, "recall": r,
                         "random precision": np.nanmean(rand[:, 0]) if np.isfinite(rand[:, 0]).any() else np.nan,
                         "random recall": rand[:, 1].mean()})
    return pd.DataFrame(rows)


def truth_summary(tt: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean precision and recall and their excess over random sets (intervals over classes)."""
    rows = []
    for m, g in tt.groupby("method", sort=False):
        ok = g.dropna(subset=["precision", "random precision"])
        prec = paired_interval(ok["precision"], ok["random precision"]) if len(ok) >= 2 else None
        rec = paired_interval(g["recall"], g["random recall"])
        rows.append({"method": m, "precision": g["precision"].mean(), "classes with a labelled unit": len(ok),
                     "precision - random": str(prec) if prec else "-",
                     "precision verdict": prec.verdict() if prec else "inconclusive",
                     "recall": g["recall"].mean(), "recall - random": str(rec), "recall verdict": rec.verdict()})
    return pd.DataFrame(rows)


def detectors_per_layer(st: Study) -> pd.DataFrame:
    """Per dissected layer: units, detectors and their share."""
    return pd.DataFrame([{"layer": name, "units": len(lab), "detectors": int(lab["detector"].sum()),
                          "share": lab["detector"].mean()} for name, lab in st.labels.items()])


#: The summary's questions: (table, column per class, True when larger is better).
QUESTIONS = {"smallest set": ("ablation", "size", False), "own drop per unit": ("ablation", "drop per unit", True),
             "specificity (own - other drop)": ("ablation", "own - other", True),
             "precision vs planted truth": ("truth", "precision", True),
             "recall vs planted truth": ("truth", "recall", True)}


def ranking(abl: pd.DataFrame, truth: pd.DataFrame | None) -> pd.DataFrame:
    """Per question: the methods in rank order (mean over classes) and whether the first beats the
    runner-up, by the paired interval over classes of their difference (oriented: > 0 favours the first)."""
    tables = {"ablation": abl.assign(**{"drop per unit": abl["own drop"] / abl["size"].clip(lower=1),
                                        "own - other": abl["own drop"] - abl["other drop"]}), "truth": truth}
    rows = []
    for question, (name, col, larger) in QUESTIONS.items():
        if tables[name] is None:
            continue
        wide = tables[name].pivot(index="class", columns="method", values=col)
        order = wide.mean().sort_values(ascending=not larger).index.tolist()
        sign = 1 if larger else -1
        pair = wide[order[:2]].dropna()
        iv = paired_interval(sign * pair[order[0]], sign * pair[order[1]]) if len(pair) >= 2 else None
        rows.append({"question": question, "order (best first)": " > ".join(order),
                     "means": ", ".join(f"{m} {wide[m].mean():.3g}" for m in order),
                     "first - runner-up": str(iv) if iv else "-",
                     "first separated": iv.verdict() if iv else "inconclusive"})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- heterogeneity lens

@dataclasses.dataclass
class HeteroLens:
    """The heterogeneity lens of one seed: per layer of the trained baseline, its detectors and the width
    share each LW-DNA keeps (`width_detector_table`), and what they were measured on."""

    table: pd.DataFrame
    modes: list[str]
    seed: int
    data_label: str
    baseline_acc: float


def lens_layers(arch: Arch) -> list[tuple[str, str]]:
    """(module, latent vector) of each layer the lens compares, in forward order: the BatchNorm of every
    convolution inside a block (the block's own width) and the last block of each stage (the stage's
    residual stream, whose width every block of the stage shares)."""
    out = []
    for stage in arch.blocks:
        for block in stage:
            convs = [spec for name, spec in block.items() if name != "shortcut"]
            out += [(spec.bn, spec.vout) for spec in convs[:-1]]
        out.append((stage[-1]["conv1"].weight.rpartition(".")[0], convs[-1].vout))
    return out


def hetero_lens(cfg: Config) -> HeteroLens | None:
    """The lens of `cfg.hetero_params` (None when it is None): the first seed's trained baseline and LW-DNAs,
    read from the heterogeneity run's cache (same parameters, same entries; trained only when missing), and
    the baseline's `lens_layers` dissected on that run's concept world exported as Broden at its own
    resolution (cached), with the dissection set's settings (quantile, IoU threshold, ...)."""
    if cfg.hetero is None:
        return None
    h = cfg.hetero
    d = hetero_run.load_data(h)
    seed = h.seed_list[0]
    base = hetero_run.baseline(h, d, seed)
    lw = hetero_run.lwdna(h, d, seed)
    hc = h.hetero(len(d.classes), d.input_size)
    arch, widened = hetero_method.arch_for(hc, widened=False), hetero_method.arch_for(hc, widened=True)
    net = networks.build_network(arch)
    net.load_state_dict(base["state"])
    layers = lens_layers(arch)
    how = dissect_run.DissectConfig.from_params({n: getattr(cfg.dissection, n)
                                                 for n in dissect_run.DissectConfig.names()})
    root = dissect_run.world_broden(d.world, cfg.progress)
    res = dissect_run.dissect(net, [name for name, _ in layers], root, how)
    table = width_detector_table(layers, {name: r.unit_labels() for name, r in res.items()}, widened.vectors,
                                 {r["score"]: r["channels"] for r in lw})
    return HeteroLens(table, h.modes, seed, d.label, float(base["val_acc"]))


def width_detector_table(layers: Sequence[tuple[str, str]], labels: Mapping[str, pd.DataFrame],
                         widened: Mapping[str, int], kept: Mapping[str, Mapping[str, int]]) -> pd.DataFrame:
    """Per layer (module, vector): the baseline's units, detectors and detector share (`labels`: per-unit
    labels by module), and per scoring mode m the LW-DNA's kept share of the widened width,
    `kept[m][vector] / widened[vector]`, as column 'kept share (m)'."""
    rows = []
    for name, vector in layers:
        lab = labels[name]
        rows.append({"layer": name, "vector": vector, "units": len(lab), "detectors": int(lab["detector"].sum()),
                     "detector share": float(lab["detector"].mean()),
                     **{f"kept share ({m})": counts[vector] / widened[vector] for m, counts in kept.items()}})
    return pd.DataFrame(rows)


def width_detector_summary(table: pd.DataFrame, modes: Sequence[str]) -> pd.DataFrame:
    """Per scoring mode: Spearman's rho of kept share against detector share over the layers with its 95 %
    interval (`method.rank_correlation`), the exact permutation p-value, and the verdict on rho > 0 (decided
    by the interval: with few layers it is wide, and 'inconclusive' when it allows either sign)."""
    rows = []
    for m in modes:
        x, y = table["detector share"], table[f"kept share ({m})"]
        iv = method.rank_correlation(x, y)
        rows.append({"score": m, "layers": len(table), "rho": iv.mean, "interval": f"[{iv.low:+.2f}, {iv.high:+.2f}]",
                     "permutation p": method.permutation_p(x, y), "verdict (rho > 0)": iv.verdict()})
    return pd.DataFrame(rows)
