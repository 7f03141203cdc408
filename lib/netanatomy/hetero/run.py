"""The heterogeneity notebook's runs: its configuration, the cached trainings and the result tables.

- `Config.from_params(P)`: the notebook's parameters, each checked; it produces the method's
  `HeteroConfig` (`cfg.hetero(num_classes, input_size)`), the training recipe (`cfg.recipe`), the
  scoring modes (`cfg.modes`) and the seeds (`cfg.seed_list`).
- `load_data(cfg)`: the notebook's data (the concept world's 'hetero' world, or real data).
- `experiment(cfg, data)`: for every seed the width-1 baseline and one LW-DNA per scoring mode, each
  trained with the same recipe and cached (`cache.cached`; training resumes from its checkpoint).
- Tables: `complexity_table`, `accuracy_table`, `channel_table`, `search_traces`, `versus_baseline`.
- `step(P)`: the notebook's heavy step for `python -m netanatomy run heterogeneity -f ...` (also
  under torchrun: every rank builds the same LW-DNA from rank 0's channel scores).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .. import data as data_mod
from .. import stats
from ..cache import cached, entry
from ..config import RunConfig, choice, either, integer, items, number, optional, param, text
from ..runtime import seed_everything
from ..subject import Data
from ..subject import load_data as load_subject_data
from ..train import TrainConfig, fit, recipe_key
from . import method
from .method import Arch, HeteroConfig

def _method_param(name: str):
    """A notebook parameter that is one of `HeteroConfig`'s fields: the same default, check and doc."""
    f = HeteroConfig.__dataclass_fields__[name]
    return param(f.default, f.metadata["check"], f.metadata["doc"])


@dataclasses.dataclass
class Config(RunConfig):
    """The heterogeneity notebook's parameters (`Config.from_params(P)` rejects unknown names)."""

    model: str = _method_param("model")
    depth: int = _method_param("depth")
    width_mult: float = _method_param("width_mult")
    ratio: float = _method_param("ratio")
    remain_percentage: float = _method_param("remain_percentage")
    linear_percentage: float = _method_param("linear_percentage")
    score: list = param(list(method.SCORES), either(items(choice(*method.SCORES), unique=True),
                                                    choice(*method.SCORES),
                                                    expected=f"a scoring mode or a list of them "
                                                             f"({', '.join(method.SCORES)}), without repeats"),
                        "channel scoring modes to compare")
    search_batches: int = _method_param("search_batches")
    search_batch_size: int | None = _method_param("search_batch_size")
    embedding_dim: int = _method_param("embedding_dim")
    epochs: int = param(8, integer(1), "training epochs of baseline and LW-DNA (same recipe)")
    lr: float = param(0.1, number(0, lo_open=True), "SGD learning rate (cosine schedule, momentum 0.9); also the search's")
    batch_size: int = param(128, integer(1), "training batch size (global batch under torchrun)")
    weight_decay: float = param(1e-4, number(0), "SGD weight decay")
    seeds: int = param(2, integer(1), "number of seeds (seed, seed + 1, ...)")
    dataset: str = param("concept_world", choice(*data_mod.DATASETS), "data set")
    data_root: str | None = param(None, optional(text()), "folder of the real data set (None for the concept world)")
    image_size: int = param(32, integer(8), "input size (concept world / ImageFolder; CIFAR-10 is 32)")
    num_workers: int = param(0, integer(0), "data-loader workers")

    def validate(self) -> None:
        method.check_layout(self.model, self.depth)

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
                           weight_decay=self.weight_decay, schedule="cosine", seed=self.seed, device=self.device,
                           num_workers=self.num_workers, progress=self.progress)

    def hetero(self, num_classes: int, input_size: int) -> HeteroConfig:
        """The method's settings for data with `num_classes` classes of `input_size` pixels."""
        return HeteroConfig(model=self.model, depth=self.depth, width_mult=self.width_mult, ratio=self.ratio,
                            remain_percentage=self.remain_percentage, linear_percentage=self.linear_percentage,
                            search_batches=self.search_batches, search_lr=self.lr,
                            search_batch_size=self.search_batch_size, embedding_dim=self.embedding_dim,
                            num_classes=num_classes, input_size=input_size)


def load_data(cfg: Config) -> Data:
    """The notebook's data: the scale's 'hetero' concept world at `image_size`, or the real data set
    (CIFAR-10 at its native 32 px)."""
    size = None if cfg.dataset == "cifar10" else cfg.image_size
    return load_subject_data(cfg.dataset, cfg.data_root, cfg.scale, world="hetero", image_size=size,
                             progress=cfg.progress)


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
            "flops": stats.count_flops(net, (1, 3, arch.input_size, arch.input_size)),
            "flops_analytic": method.analytic_flops(arch, counts),
            "params": stats.count_params(net), "params_analytic": method.analytic_params(arch, counts),
            "channels": counts, "history": history.to_dict("records")}


def baseline(cfg: Config, data: Data, seed: int) -> dict:
    """The regular width-1 network trained with the recipe (cached by configuration)."""
    hcfg = cfg.hetero(len(data.classes), data.input_size)
    arch = method.arch_for(hcfg, widened=False)
    recipe = dataclasses.replace(cfg.recipe, seed=seed)

    def train(checkpoint) -> dict:
        seed_everything(seed)
        result = _train_and_measure(method.build_network(arch), arch, arch.vectors, data, recipe, checkpoint)
        return {**result, "network": "baseline", "score": "-", "seed": seed}

    path = entry("hetero", "baseline", model=hcfg.model, depth=hcfg.depth, num_classes=hcfg.num_classes,
                 input_size=hcfg.input_size, recipe=_recipe_key(recipe), data=data.key(), seed=seed)
    return cached(path, train)


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

    inits = {m: cached(entry("hetero", f"shrunk-{m}", score=m, **key), lambda _, m=m: shrunk(m)) for m in cfg.modes}
    searched.cache_clear()  # the (large) hypernetwork is not needed for training

    def train(mode: str, checkpoint) -> dict:
        init = inits[mode]
        net = method.build_network(arch, init["counts"])
        net.load_state_dict(init["state"])
        result = _train_and_measure(net, arch, init["counts"], data, recipe, checkpoint)
        return {**result, "network": "lw-dna", "score": mode, "seed": seed, "threshold": init["threshold"],
                "search_ratio": init["ratio"], "reached": init["reached"], "message": init["message"],
                "trace": init["trace"], "search_loss": init["search_loss"]}

    return [cached(entry("hetero", f"lwdna-{m}", score=m, recipe=_recipe_key(recipe), **key),
                   lambda checkpoint, m=m: train(m, checkpoint)) for m in cfg.modes]


@dataclasses.dataclass
class Experiment:
    """Everything a run produced: one row per trained network, and the architectures."""

    runs: pd.DataFrame           # network, score, seed, val_acc, flops, flops_analytic, params, ...
    details: list[dict]          # full results (channels, search trace, history)
    baseline_arch: Arch
    widened_arch: Arch
    config: HeteroConfig


RUN_COLUMNS = ["network", "score", "seed", "val_acc", "train_acc", "flops", "flops_analytic", "params",
               "params_analytic", "search_ratio", "reached"]


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
    then (rank 0) print the accuracy table and whether the hypothesis held per scoring mode."""
    cfg = Config.from_params(P)
    exp = experiment(cfg, load_data(cfg))
    if _rank() == 0:
        acc = accuracy_table(exp)
        print(acc.to_string(index=False))
        print(f"hypothesis held (LW-DNA more accurate at fewer FLOPs), per scoring mode: {held(acc)}")


# ----------------------------------------------------------------------------- tables
def layer_channels(arch: Arch, counts: dict[str, int] | None = None) -> pd.DataFrame:
    """Per convolution: its name, latent vector and output channels under `counts`."""
    c = counts or arch.vectors
    return pd.DataFrame([{"layer": s.weight, "vector": s.vout, "out_channels": c[s.vout]} for s in arch.convs])


def complexity_table(exp: Experiment) -> pd.DataFrame:
    """FLOPs and params of baseline, widened and each LW-DNA (seed-mean), flop_counter vs analytic."""
    rows = []
    for name, arch in (("baseline", exp.baseline_arch), ("widened", exp.widened_arch)):
        net = method.build_network(arch)
        rows.append({"network": name, "score": "-",
                     "MFLOPs": stats.count_flops(net, (1, 3, arch.input_size, arch.input_size)) / 1e6,
                     "MFLOPs_analytic": method.analytic_flops(arch) / 1e6, "params_k": stats.count_params(net) / 1e3,
                     "params_k_analytic": method.analytic_params(arch) / 1e3})
    lw = exp.runs[exp.runs["network"] == "lw-dna"]
    for mode, g in lw.groupby("score", sort=False):
        rows.append({"network": "lw-dna", "score": mode, "MFLOPs": g["flops"].mean() / 1e6,
                     "MFLOPs_analytic": g["flops_analytic"].mean() / 1e6, "params_k": g["params"].mean() / 1e3,
                     "params_k_analytic": g["params_analytic"].mean() / 1e3})
    df = pd.DataFrame(rows)
    widened = df.loc[df["network"] == "widened", "MFLOPs"].iloc[0]
    base = df.loc[df["network"] == "baseline", "MFLOPs"].iloc[0]
    df["ratio_to_widened"] = df["MFLOPs"] / widened
    df["ratio_to_baseline"] = df["MFLOPs"] / base
    return df


def accuracy_table(exp: Experiment) -> pd.DataFrame:
    """Validation accuracy (%) mean and std over seeds, FLOPs and params, per network and scoring mode."""
    r = exp.runs.copy()
    r["acc"] = 100 * r["val_acc"]
    g = r.groupby(["network", "score"], sort=False)
    out = g.agg(acc_mean=("acc", "mean"), acc_std=("acc", "std"), n_seeds=("seed", "count"),
                MFLOPs=("flops", "mean"), params_k=("params", "mean")).reset_index()
    out["MFLOPs"] /= 1e6
    out["params_k"] /= 1e3
    out["acc_std"] = out["acc_std"].fillna(0.0)
    return out


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


def versus_baseline(acc: pd.DataFrame) -> pd.DataFrame:
    """Per scoring mode, the LW-DNA against the baseline (from `accuracy_table`): accuracy difference in
    points, the seed spread of that difference (sqrt of the summed variances; no estimate when either
    has one seed), whether its FLOPs are lower, and whether the hypothesis held (more accurate at
    fewer FLOPs)."""
    base = acc[acc["network"] == "baseline"].iloc[0]
    rows = []
    for _, row in acc[acc["network"] == "lw-dna"].iterrows():
        diff = row["acc_mean"] - base["acc_mean"]
        fewer = bool(row["MFLOPs"] < base["MFLOPs"])
        rows.append({"score": row["score"], "acc_mean": row["acc_mean"], "acc_std": row["acc_std"],
                     "MFLOPs": row["MFLOPs"], "base_acc_mean": base["acc_mean"], "base_acc_std": base["acc_std"],
                     "base_MFLOPs": base["MFLOPs"], "diff": diff,
                     "spread": math.sqrt(row["acc_std"] ** 2 + base["acc_std"] ** 2),
                     "one_seed": bool(row["n_seeds"] < 2 or base["n_seeds"] < 2),
                     "fewer_flops": fewer, "held": bool(diff > 0 and fewer)})
    return pd.DataFrame(rows)


def held(acc: pd.DataFrame) -> dict[str, bool]:
    """Scoring mode -> whether its LW-DNA beat the baseline at lower FLOPs."""
    return {row.score: bool(row.held) for row in versus_baseline(acc).itertuples()}

