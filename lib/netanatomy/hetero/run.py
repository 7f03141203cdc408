"""The heterogeneity notebook's runs: its configuration, the cached trainings and the result tables.

- `Config.from_params(P)`: the notebook's parameters, each checked; it produces the method's
  `HeteroConfig` (`cfg.hetero(num_classes, input_size)`), the training recipe (`cfg.recipe`), the
  scoring modes (`cfg.modes`) and the seeds (`cfg.seed_list`).
- `load_data(cfg)`: the notebook's data (the concept world's 'hetero' world, or real data).
- `experiment(cfg, data)`: for every seed the width-1 baseline and one LW-DNA per scoring mode, each
  trained with the same recipe and cached (`cache.cached`; training resumes from its checkpoint).
- Tables: `complexity_table`, `accuracy_table`, `channel_table`, `search_traces`, and `verdicts`: each
  LW-DNA against the baseline and each scoring mode against random scores, paired by seed, with a
  95 % interval of the accuracy difference that decides "held", "did not hold" or "inconclusive".
- `step(P)`: the notebook's heavy step for `python -m netanatomy run heterogeneity -f ...` (also
  under torchrun: every rank builds the same LW-DNA from rank 0's channel scores).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .. import data as data_mod
from .. import stats
from ..cache import cached, entry
from ..config import RunConfig, choice, either, integer, items, number, optional, param, text
from ..errors import ParamError
from ..runtime import seed_everything
from ..subject import Data
from ..subject import load_data as load_subject_data
from ..train import TrainConfig, fit, recipe_key
from . import networks
from . import method
from .networks import Arch
from .method import HeteroConfig


def _method_param(name: str):
    """A notebook parameter that is one of `HeteroConfig`'s fields: the same default, check and doc."""
    f = HeteroConfig.__dataclass_fields__[name]
    return param(f.default, f.metadata["check"], f.metadata["doc"])


@dataclasses.dataclass
class Config(RunConfig):
    """The heterogeneity notebook's parameters (`Config.from_params(P)` rejects unknown names)."""

    model: str = _method_param("model")
    depth: int = param(8, integer(8), "network depth (CIFAR ResNet 6n+2; ImageNet ResNet 50, 101 or 152)")
    width_mult: float = _method_param("width_mult")
    ratio: float = _method_param("ratio")
    flops_convention: str = _method_param("flops_convention")
    remain_percentage: float = _method_param("remain_percentage")
    linear_percentage: float = _method_param("linear_percentage")
    score: list = param(["magnitude", "random"], either(items(choice(*method.SCORES), unique=True),
                                                        choice(*method.SCORES),
                                                        expected=f"a scoring mode or a list of them "
                                                                 f"({', '.join(method.SCORES)}), without repeats"),
                        "channel scoring modes to compare (random is the control)")
    search_batches: int = _method_param("search_batches")
    search_batch_size: int | None = _method_param("search_batch_size")
    embedding_dim: int = _method_param("embedding_dim")
    epochs: int = param(8, integer(1), "training epochs of baseline and LW-DNA (same recipe)")
    lr: float = param(0.2, number(0, lo_open=True), "SGD peak learning rate (momentum 0.9); also the search's")
    schedule: str = param("onecycle", choice("cosine", "onecycle"), "learning-rate schedule (per epoch / per step)")
    label_smoothing: float = param(0.1, number(0, 1, hi_open=True), "label smoothing of the training loss")
    batch_size: int = param(128, integer(1), "training batch size (global batch under torchrun)")
    weight_decay: float = param(5e-4, number(0), "SGD weight decay")
    seeds: int = param(5, integer(1), "number of seeds (seed, seed + 1, ...); verdicts need at least 2")
    dataset: str = param("concept_world", choice(*data_mod.DATASETS), "data set")
    data_root: str | None = param(None, optional(text()), "folder of the real data set (None for the concept world)")
    image_size: int = param(16, integer(8), "input size (concept world / ImageFolder; CIFAR-10 is 32)")
    num_workers: int = param(0, integer(0), "data-loader workers")
    max_train_images: int | None = param(None, optional(integer(1)), "cap on training images, a seeded draw (None: all)")
    max_val_images: int | None = param(None, optional(integer(1)), "cap on validation images, a seeded draw (None: all)")

    def validate(self) -> None:
        networks.check_layout(self.model, self.depth)
        if self.dataset == "concept_world" and self.data_root is not None:
            raise ParamError("data_root", f"is only read for real data sets; the concept world is built in "
                                          f"(got {self.data_root!r} with dataset 'concept_world')")

    @property
    def modes(self) -> list[str]:
        """The scoring modes to compare, as a list."""
        return [self.score] if isinstance(self.score, str) else list(self.score)

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    @property
    def recipe(self) -> TrainConfig:
        """The training recipe of baseline and LW-DNA (each run replaces `seed` by its own)."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer="sgd", momentum=0.9,
                           weight_decay=self.weight_decay, schedule=self.schedule,
                           label_smoothing=self.label_smoothing, seed=self.seed, device=self.device,
                           num_workers=self.num_workers, eval_every=0, progress=self.progress)

    def hetero(self, num_classes: int, input_size: int) -> HeteroConfig:
        """The method's settings for data with `num_classes` classes of `input_size` pixels."""
        return HeteroConfig(model=self.model, depth=self.depth, width_mult=self.width_mult, ratio=self.ratio,
                            flops_convention=self.flops_convention, remain_percentage=self.remain_percentage,
                            linear_percentage=self.linear_percentage,
                            search_batches=self.search_batches, search_lr=self.lr,
                            search_batch_size=self.search_batch_size, embedding_dim=self.embedding_dim,
                            num_classes=num_classes, input_size=input_size)


def load_data(cfg: Config) -> Data:
    """The notebook's data: the scale's 'hetero' concept world at `image_size`, or the real data set
    (CIFAR-10, pickle or JPEG, at its native 32 px), capped at `max_train_images` / `max_val_images`."""
    size = None if cfg.dataset in ("cifar10", "cifar10_jpeg") else cfg.image_size
    return load_subject_data(cfg.dataset, cfg.data_root, cfg.scale, world="hetero", image_size=size,
                             progress=cfg.progress, max_train=cfg.max_train_images, max_val=cfg.max_val_images)


# ----------------------------------------------------------------------------- torchrun
def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _rank_zero_scores(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Under torchrun every rank must build the same architecture: every rank takes rank 0's scores."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return scores
    if not dist.is_initialized():  # as train.fit does (a cached baseline may mean fit has not run yet)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    names = list(scores)
    flat = torch.cat([scores[k].float() for k in names])
    if dist.get_backend() == "nccl":
        flat = flat.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))))
    dist.broadcast(flat, 0)
    return dict(zip(names, flat.cpu().split([len(scores[k]) for k in names])))


# ----------------------------------------------------------------------------- cached runs
def _recipe_key(recipe: TrainConfig) -> dict:
    return {k: v for k, v in recipe_key(recipe).items() if k != "seed"}  # each run's seed is keyed on its own


def _train_and_measure(net: nn.Module, arch: Arch, counts: dict[str, int], data: Data, recipe: TrainConfig,
                       checkpoint) -> dict:
    history = fit(net, data.train_aug, data.val, recipe, checkpoint=checkpoint)
    net.cpu().eval()
    return {"val_acc": float(history["val_acc"].iloc[-1]) if "val_acc" in history else float("nan"),
            "train_acc": float(history["train_acc"].iloc[-1]) if len(history) else float("nan"),
            **flops_counts(net, arch, counts),
            "params": stats.count_params(net), "params_analytic": networks.analytic_params(arch, counts),
            "channels": counts, "history": history.to_dict("records")}


def flops_counts(net: nn.Module, arch: Arch, counts: dict[str, int]) -> dict[str, int]:
    """A built network's FLOPs: `flops` (torch.utils.flop_counter, 2 per multiply-add), `flops_hh` and
    `flops_dhp` (upstream's two counters, `networks.count_flops_as`), and `flops_analytic` (the torch
    convention from the channel configuration, which must equal `flops`)."""
    size = arch.input_size
    return {"flops": stats.count_flops(net, (1, 3, size, size)),
            **{f"flops_{c}": networks.count_flops_as(net, size, c) for c in networks.SEARCH_CONVENTIONS},
            "flops_analytic": networks.analytic_flops(arch, counts)}


def baseline(cfg: Config, data: Data, seed: int) -> dict:
    """The regular width-1 network trained with the recipe (cached by configuration), with its trained
    weights ("state": the state dict of `networks.build_network(arch)`)."""
    hcfg = cfg.hetero(len(data.classes), data.input_size)
    arch = method.arch_for(hcfg, widened=False)
    recipe = dataclasses.replace(cfg.recipe, seed=seed)

    def train(checkpoint) -> dict:
        seed_everything(seed)
        net = networks.build_network(arch)
        result = _train_and_measure(net, arch, arch.vectors, data, recipe, checkpoint)
        return {**result, "state": net.state_dict(), "network": "baseline", "score": "-", "seed": seed}

    # version 2: the result keeps the trained weights ("state"; read by the anatomy notebook)
    path = entry("hetero", "baseline", version=2, model=hcfg.model, depth=hcfg.depth, num_classes=hcfg.num_classes,
                 input_size=hcfg.input_size, recipe=_recipe_key(recipe), data=data.key(), seed=seed)
    return cached(path, train, label=f"train baseline seed {seed}")


def lwdna(cfg: Config, data: Data, seed: int) -> list[dict]:
    """Widen, search, shrink and train the LW-DNA for each scoring mode of one seed.

    One search per seed is shared by the modes, so they differ only in how channels are scored. The
    shrunk network before training ('shrunk-<mode>') and the trained result ('lwdna-<mode>') are
    cached per (settings, data, seed, mode); the search runs only when a shrunk network is missing.
    """
    hcfg = cfg.hetero(len(data.classes), data.input_size)
    arch = method.arch_for(hcfg, widened=True)
    recipe = dataclasses.replace(cfg.recipe, seed=seed)
    key = {"method": dataclasses.asdict(hcfg), "data": data.key(), "seed": seed,
           "search_batch_size": hcfg.search_batch_size or recipe.batch_size, "weight_decay": recipe.weight_decay}

    @functools.cache
    def searched() -> tuple[method.HyperResNet, pd.DataFrame]:
        train_ds = data.train_aug  # built before seeding: the draws after the seed are the search's own
        seed_everything(seed)
        hyper = method.HyperResNet(arch, hcfg.embedding_dim)
        losses = method.search(hyper, train_ds, hcfg, recipe.batch_size, seed, recipe.device, recipe.weight_decay,
                               cfg.progress)
        return hyper.cpu().eval(), losses

    def shrunk(mode: str) -> dict:
        hyper, losses = searched()
        res = method.shrink(arch, _rank_zero_scores(method.channel_scores(hyper, mode, seed)), hcfg)
        return {"state": method.materialise(hyper, res.masks).state_dict(), "counts": res.counts,
                "threshold": res.threshold, "ratio": res.ratio, "reached": res.reached, "message": res.message,
                "trace": res.trace.to_dict("records"), "search_loss": losses.to_dict("records")}

    inits = {m: cached(entry("hetero", f"shrunk-{m}", score=m, **key), lambda _, m=m: shrunk(m),
                       label=f"search and shrink ({m}) seed {seed}") for m in cfg.modes}
    searched.cache_clear()  # the (large) hypernetwork is not needed for training

    def train(mode: str, checkpoint) -> dict:
        init = inits[mode]
        net = networks.build_network(arch, init["counts"])
        net.load_state_dict(init["state"])
        result = _train_and_measure(net, arch, init["counts"], data, recipe, checkpoint)
        return {**result, "network": "lw-dna", "score": mode, "seed": seed, "threshold": init["threshold"],
                "search_ratio": init["ratio"], "reached": init["reached"], "message": init["message"],
                "trace": init["trace"], "search_loss": init["search_loss"]}

    return [cached(entry("hetero", f"lwdna-{m}", score=m, recipe=_recipe_key(recipe), **key),
                   lambda checkpoint, m=m: train(m, checkpoint), label=f"train lw-dna ({m}) seed {seed}")
            for m in cfg.modes]


@dataclasses.dataclass
class Experiment:
    """Everything a run produced: one row per trained network, and the architectures."""

    runs: pd.DataFrame           # network, score, seed, val_acc, flops, flops_analytic, params, ...
    details: list[dict]          # full results (channels, search trace, history)
    baseline_arch: Arch
    widened_arch: Arch
    config: HeteroConfig


RUN_COLUMNS = ["network", "score", "seed", "val_acc", "train_acc", "flops", "flops_hh", "flops_dhp", "flops_analytic",
               "params", "params_analytic", "search_ratio", "reached"]


def experiment(cfg: Config, data: Data) -> Experiment:
    """Baseline and LW-DNA (each scoring mode) for every seed, trained with the same recipe."""
    details = []
    for seed in tqdm(cfg.seed_list, desc="seeds", disable=not cfg.progress):
        details.append(baseline(cfg, data, seed))
        details.extend(lwdna(cfg, data, seed))
    runs = pd.DataFrame([{c: d.get(c) for c in RUN_COLUMNS} for d in details])
    hcfg = cfg.hetero(len(data.classes), data.input_size)
    return Experiment(runs, details, method.arch_for(hcfg, False), method.arch_for(hcfg, True), hcfg)


def step(P: dict) -> None:
    """The notebook's heavy step (`python -m netanatomy run heterogeneity`): train and cache every run,
    then (rank 0) print the accuracy table and the verdicts."""
    cfg = Config.from_params(P)
    exp = experiment(cfg, load_data(cfg))
    if _rank() == 0:
        print(accuracy_table(exp).to_string(index=False))
        print(verdicts(exp.runs).to_string(index=False))


# ----------------------------------------------------------------------------- tables
def layer_channels(arch: Arch, counts: dict[str, int] | None = None) -> pd.DataFrame:
    """Per convolution: its name, latent vector and output channels under `counts`."""
    c = counts or arch.vectors
    return pd.DataFrame([{"layer": s.weight, "vector": s.vout, "out_channels": c[s.vout]} for s in arch.convs])


def complexity_table(exp: Experiment) -> pd.DataFrame:
    """FLOPs and params of baseline, widened and each LW-DNA (seed-mean) under every convention: `MFLOPs`
    (torch.utils.flop_counter, 2 per multiply-add), `MFLOPs_hh` and `MFLOPs_dhp` (upstream's counters),
    `MFLOPs_analytic` (torch convention from the channel counts), and the ratio to the widened network
    under each convention (`ratio_hh` equals the torch ratio; the search targets `ratio_<search convention>`)."""
    rows = []
    for name, arch in (("baseline", exp.baseline_arch), ("widened", exp.widened_arch)):
        net = networks.build_network(arch)
        rows.append({"network": name, "score": "-", **flops_counts(net, arch, arch.vectors),
                     "params": stats.count_params(net), "params_analytic": networks.analytic_params(arch)})
    lw = exp.runs[exp.runs["network"] == "lw-dna"]
    columns = ["flops", "flops_hh", "flops_dhp", "flops_analytic", "params", "params_analytic"]
    for mode, g in lw.groupby("score", sort=False):
        rows.append({"network": "lw-dna", "score": mode, **g[columns].mean().to_dict()})
    df = pd.DataFrame(rows)
    widened = df[df["network"] == "widened"].iloc[0]
    out = df[["network", "score"]].copy()
    for col, name in (("flops", "MFLOPs"), ("flops_hh", "MFLOPs_hh"), ("flops_dhp", "MFLOPs_dhp"),
                      ("flops_analytic", "MFLOPs_analytic")):
        out[name] = df[col] / 1e6
    out["params_k"], out["params_k_analytic"] = df["params"] / 1e3, df["params_analytic"] / 1e3
    for c in networks.SEARCH_CONVENTIONS:
        out[f"ratio_{c}"] = df[f"flops_{c}"] / widened[f"flops_{c}"]
    out["ratio_to_baseline"] = df["flops"] / df["flops"].iloc[0]
    return out


def accuracy_table(exp: Experiment) -> pd.DataFrame:
    """Per network and scoring mode: validation accuracy (%) mean over seeds with its 95 % interval
    (Student t; NaN with one seed), MFLOPs (torch convention) and params."""
    rows = []
    for (network, score), g in exp.runs.groupby(["network", "score"], sort=False):
        acc = 100 * g["val_acc"].to_numpy()
        iv = stats.mean_interval(acc) if len(acc) >= 2 else None
        rows.append({"network": network, "score": score, "n_seeds": len(acc), "acc_mean": acc.mean(),
                     "acc_low": iv.low if iv else float("nan"), "acc_high": iv.high if iv else float("nan"),
                     "MFLOPs": g["flops"].mean() / 1e6, "params_k": g["params"].mean() / 1e3})
    return pd.DataFrame(rows)


def _first_seed_lwdna(exp: Experiment, seed: int | None) -> list[dict]:
    seed = exp.runs["seed"].min() if seed is None else seed
    return [d for d in exp.details if d["network"] == "lw-dna" and d["seed"] == seed]


def channel_table(exp: Experiment, seed: int | None = None) -> pd.DataFrame:
    """Per conv layer: output channels of baseline, widened and each LW-DNA (of one seed, default the first)."""
    table = layer_channels(exp.baseline_arch).rename(columns={"out_channels": "baseline"})
    table["widened"] = layer_channels(exp.widened_arch)["out_channels"].values
    for d in _first_seed_lwdna(exp, seed):
        table[f"lw-dna ({d['score']})"] = layer_channels(exp.widened_arch, d["channels"])["out_channels"].values
    return table


def search_traces(exp: Experiment, seed: int | None = None) -> pd.DataFrame:
    """The binary-search trace (threshold, step, FLOPs ratio per iteration) of each scoring mode (one seed)."""
    frames = [pd.DataFrame(d["trace"]).assign(score=d["score"]) for d in _first_seed_lwdna(exp, seed)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ----------------------------------------------------------------------------- verdicts
def _arm(runs: pd.DataFrame, network: str, score: str) -> pd.DataFrame:
    return runs[(runs["network"] == network) & (runs["score"] == score)].set_index("seed")


def compare(runs: pd.DataFrame, a: tuple[str, str], b: tuple[str, str], need_fewer_flops: bool) -> dict:
    """Arm `a` against arm `b` (each a (network, score) pair of `runs`), paired by seed: the mean accuracy
    difference a - b in points with its 95 % interval (`stats.paired_interval`), the per-seed differences,
    the FLOPs ratio a / b, and the verdict on "a is more accurate than b" (with `need_fewer_flops`: "... at
    fewer FLOPs in every seed"): "held" when the whole interval lies above 0, "did not hold" when it lies
    at or below 0 or the FLOPs are not fewer, else "inconclusive" (so too with fewer than 2 paired seeds)."""
    A, B = _arm(runs, *a), _arm(runs, *b)
    seeds = sorted(set(A.index) & set(B.index))
    acc_a, acc_b = 100 * A.loc[seeds, "val_acc"].to_numpy(), 100 * B.loc[seeds, "val_acc"].to_numpy()
    diffs = acc_a - acc_b
    cheaper = bool((A.loc[seeds, "flops"].to_numpy() < B.loc[seeds, "flops"].to_numpy()).all())
    iv = stats.paired_interval(acc_a, acc_b) if len(seeds) >= 2 else None
    if iv is None:
        verdict = stats.INCONCLUSIVE
    elif need_fewer_flops and not cheaper:
        verdict = stats.NOT_HELD
    else:
        verdict = iv.verdict(above=0.0)
    name = lambda arm: arm[0] if arm[1] == "-" else f"{arm[0]} ({arm[1]})"  # noqa: E731
    return {"comparison": f"{name(a)} - {name(b)}", "n_seeds": len(seeds),
            "diff": float(diffs.mean()) if seeds else np.nan,
            "low": iv.low if iv else np.nan, "high": iv.high if iv else np.nan,
            "seed_diffs": [round(float(d), 4) for d in diffs],
            "flops_ratio": float(A.loc[seeds, "flops"].mean() / B.loc[seeds, "flops"].mean()) if seeds else np.nan,
            "fewer_flops": cheaper if need_fewer_flops else None, "verdict": verdict}


def verdicts(runs: pd.DataFrame) -> pd.DataFrame:
    """The hypothesis per scoring mode (LW-DNA more accurate than the baseline at fewer FLOPs, paired by
    seed) and, when random scores ran, the control: each other mode's LW-DNA against the random one."""
    modes = [m for m in runs.loc[runs["network"] == "lw-dna", "score"].unique()]
    rows = [compare(runs, ("lw-dna", m), ("baseline", "-"), need_fewer_flops=True) for m in modes]
    if "random" in modes:
        rows += [compare(runs, ("lw-dna", m), ("lw-dna", "random"), need_fewer_flops=False)
                 for m in modes if m != "random"]
    return pd.DataFrame(rows)
