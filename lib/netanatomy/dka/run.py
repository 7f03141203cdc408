"""The DKA notebook's configuration and studies: the dense baseline and the DKA model trained with
the same trunk initialisation, seed and recipe (cached), both trunks dissected, the explanation
concentration measured, and K swept."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from .. import cache, data, models
from ..config import RunConfig, choice, either, integer, items, number, optional, param, text
from ..dissect.run import DissectConfig, detectors_per_category, dissect, world_broden
from ..errors import DataError, ParamError, require
from ..runtime import pick_device, resolve_path, seed_everything
from ..subject import Data, load_data
from ..train import TrainConfig, TrainingDiverged, evaluate, fit, recipe_key
from . import method

#: Upstream train.py: a batch loss above 10 is a divergence (the recipe is in `upstream_recipe`).
UPSTREAM_MAX_LOSS = 10.0

#: Names of the dense head (K = D) in a K sweep.
DENSE_NAMES = ("D", "dense")


# ============================================================================ configuration
@dataclasses.dataclass
class Config(RunConfig):
    """The DKA notebook's parameters, checked (README, "Dynamic-K activation"). The Network Dissection
    settings (quantile, iou_threshold, union_rule, categories) are checked by the `DissectConfig`
    built from them, `dissection`; K and the sweep are checked against D, the model's head width."""

    model: str = param("small_vgg", choice(*models.MODEL_NAMES), "architecture; its last stage is dissected")
    dataset: str = param("concept_world", choice(*data.DATASETS), "training data")
    data_root: str | None = param(None, optional(text()), "folder of a real data set (None: the concept world)")
    weights: str | None = param(None, optional(text()), "a trained DKA checkpoint (None: train it)")
    dense_weights: str | None = param(None, optional(text()), "a trained dense checkpoint (None: train it)")
    k: int = param(5, None, "K, votes summed per class: an integer in [1, D]")
    k_sweep: list | None = param([1, 2, 5, 10, "D"], optional(items(either(
        integer(), choice(*DENSE_NAMES, None), expected="an integer K, or 'D' for the dense head"), min_len=0)),
        "K values of the sweep ('D' or D: the dense head); [] skips it")
    epochs: int = param(10, integer(0), "epochs of the dense and DKA runs (0: load weights and dense_weights)")
    sweep_epochs: int | None = param(None, optional(integer(1)), "epochs of each K-sweep run (None: epochs)")
    lr: float = param(0.1, number(0, lo_open=True), "SGD learning rate, divided by 10 at every third of the epochs")
    batch_size: int = param(128, integer(1), "batch size")
    broden_root: str | None = param(None, optional(text()), "Broden folder (None: the concept world exported)")
    layer: str | None = param(None, optional(text()), "dissected layer (None: the model's last stage)")
    categories: list | None = param(None, None, "Broden categories (None: all); checked by DissectConfig")
    quantile: float = param(0.005, None, "Network Dissection top quantile; checked by DissectConfig")
    iou_threshold: float = param(0.04, None, "IoU of an interpretable unit; checked by DissectConfig")
    union_rule: str = param("lite", None, "'lite' (NetDissect-Lite) or 'image'; checked by DissectConfig")
    explain_images: int = param(6, integer(0), "validation images on the explanation pages")
    image_size: int | None = param(None, optional(integer(1)), "input size (None: the data's own)")
    D: int = dataclasses.field(default=0, init=False, repr=False)
    dissection: DissectConfig | None = dataclasses.field(default=None, init=False, repr=False)

    def validate(self) -> None:
        self.D = method.feature_dim(self.model)
        self.k = method.check_k(self.k, self.D)
        self.k_sweep = [None if s is None or s in DENSE_NAMES or s == self.D else method.check_k(s, self.D, "k_sweep")
                        for s in self.k_sweep or []]
        if self.epochs == 0:
            require(self.weights is not None and self.dense_weights is not None, "epochs",
                    "is 0 (no training): give both weights (the DKA checkpoint) and dense_weights")
            require(not self.k_sweep or self.sweep_epochs, "sweep_epochs",
                    "must be given (>= 1) for a K sweep when epochs is 0")
        self.dissection = DissectConfig(quantile=self.quantile, iou_threshold=self.iou_threshold,
                                        categories=self.categories, union_rule=self.union_rule,
                                        batch_size=max(self.batch_size, 64), device=self.device,
                                        progress=self.progress)
        for name in ("weights", "dense_weights"):
            path = getattr(self, name)
            if path is not None and not resolve_path(path).is_file():
                raise DataError(path, f"checkpoint given as {name} not found", "a .pth/.pt file saved with torch.save")
        if self.broden_root is not None:
            root = resolve_path(self.broden_root)
            if not root.is_dir() or not (root / "index.csv").is_file():
                raise DataError(root, "is not a Broden folder (parameter broden_root)",
                                "a folder holding index.csv, label.csv, category.csv and images/ "
                                "(e.g. broden1_224), or None for the exported concept world")
        elif self.dataset != "concept_world":
            raise ParamError("broden_root", f"is required for dataset {self.dataset!r}: point it at broden1_224")
        if self.layer is None:
            self.layer = models.layers(self.model, "last")[0]

    def recipe(self, epochs: int | None = None) -> TrainConfig:
        """The training recipe of the main runs (or of `epochs` epochs, for the sweep)."""
        return upstream_recipe(self.epochs if epochs is None else epochs, self.lr, self.batch_size, self.seed,
                               device=self.device, progress=self.progress)


def upstream_recipe(epochs: int, lr: float = 0.1, batch_size: int = 128, seed: int = 0,
                    max_loss: float = UPSTREAM_MAX_LOSS, device: str = "auto", progress: bool = True) -> TrainConfig:
    """Upstream train.py's recipe: SGD, momentum 0.9, weight decay 1e-4, lr / 10 at every third of
    the epochs (upstream: 90 epochs, every 30), a batch loss above `max_loss` is a divergence."""
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="sgd", momentum=0.9,
                       weight_decay=1e-4, schedule="step", step_size=max(1, epochs // 3), gamma=0.1, seed=seed,
                       device=device, max_loss=max_loss, progress=progress)


def load(cfg: Config) -> Data:
    """The data the notebook trains and explains on: `dataset`, or the scale's DKA concept world."""
    return load_data(cfg.dataset, cfg.data_root, cfg.scale, world="dka", image_size=cfg.image_size,
                     progress=cfg.progress)


# ============================================================================ training (dense vs DKA)
@dataclasses.dataclass
class Trained:
    """A trained (or loaded) model with its K (None: dense), history, accuracy and status."""

    k: int | None
    model: nn.Module | None
    history: pd.DataFrame
    val_acc: float
    status: str = "ok"            # ok | diverged | loaded
    path: Path | None = None
    message: str = ""

    @property
    def label(self) -> str:
        return "dense" if self.k is None else f"DKA K={self.k}"


def model_entry(name: str, k: int | None, data: Data, recipe: TrainConfig, width_mult: float = 1.0) -> Path:
    """Where `train_model` keeps model `name` with head K (None: dense) trained on `data` by `recipe`."""
    return cache.entry("dka", f"{name}-{'dense' if k is None else f'k{k}'}", version=2, width_mult=width_mult,
                       num_classes=len(data.classes), data=data.key(), recipe=recipe_key(recipe))


def train_model(name: str, k: int | None, data: Data, recipe: TrainConfig, width_mult: float = 1.0) -> Trained:
    """Model `name` with a dense head (k=None) or a DKA head (K = k) trained through `train.fit`.

    The trunk and head start from the same seeded initialisation for every k (the DKA head copies
    the dense head's initial weights), and data order is the recipe's seed: dense and DKA differ only
    in the head's routing. Cached by configuration (`model_entry`); an interrupted run resumes from
    its epoch checkpoint; a divergence (batch loss > `recipe.max_loss`) is recorded (status
    'diverged', with the history up to the last finished epoch) and cached too.
    """
    num_classes = len(data.classes)
    seed_everything(recipe.seed)
    model = models.build(name, num_classes, width_mult=width_mult)
    if k is not None:
        method.to_dka(model, k)

    def compute(checkpoint: cache.Checkpoint) -> dict:
        try:
            history = fit(model, data.train_aug, data.val, recipe, checkpoint=checkpoint)
        except TrainingDiverged as exc:
            state = checkpoint.load()
            return {"status": "diverged", "message": str(exc), "history": state["history"] if state else []}
        return {"status": "ok", "model": model.cpu().state_dict(), "history": history.to_dict("records")}

    path = model_entry(name, k, data, recipe, width_mult)
    saved = cache.cached(path, compute)
    history = pd.DataFrame(saved["history"])
    if saved["status"] == "diverged":
        return Trained(k, None, history, float("nan"), "diverged", path, saved["message"])
    model.load_state_dict(saved["model"])
    model.eval().to(pick_device(recipe.device))
    val_acc = float(history["val_acc"].iloc[-1]) if len(history) and "val_acc" in history else float("nan")
    return Trained(k, model, history, val_acc, "ok", path)


def load_trained(name: str, k: int | None, weights, data: Data, batch_size: int = 256, device: str = "auto",
                 progress: bool = True) -> Trained:
    """A model loaded from a checkpoint (ours or upstream) and evaluated on the validation split."""
    model = method.build(name, len(data.classes), k=k, weights=weights)
    metrics = evaluate(model, data.val, batch_size=batch_size, device=device, progress=progress)
    history = pd.DataFrame([{"epoch": 0, "val_acc": metrics["acc"], "val_loss": metrics["loss"]}])
    return Trained(k, model.eval(), history, metrics["acc"], "loaded", Path(weights))


@dataclasses.dataclass
class Pair:
    """The dense baseline and the DKA model (same trunk, seed and recipe), with their data."""

    dense: Trained
    dka: Trained
    data: Data

    @property
    def both(self) -> tuple[Trained, Trained]:
        return self.dense, self.dka

    def table(self) -> pd.DataFrame:
        rows = []
        for t in self.both:
            last = t.history.iloc[-1] if len(t.history) else {}
            k = t.k if t.k is not None else models.head(t.model)[1].in_features
            rows.append({"model": t.label, "k": k, "status": t.status, "epochs": int(last.get("epoch", 0)),
                         "train_acc": float(last.get("train_acc", float("nan"))), "val_acc": t.val_acc})
        df = pd.DataFrame(rows)
        df["val_acc_minus_dense"] = df["val_acc"] - self.dense.val_acc
        return df


def train_pair(cfg: Config) -> Pair:
    """Train (or load from `weights`/`dense_weights`) the dense baseline and the DKA model.

    A divergence of either main run stops with a clear TrainingDiverged message."""
    data = load(cfg)
    out = {}
    for name, k, weights in (("dense", None, cfg.dense_weights), ("dka", cfg.k, cfg.weights)):
        if weights is not None:
            out[name] = load_trained(cfg.model, k, weights, data, cfg.batch_size, cfg.device, cfg.progress)
            continue
        out[name] = train_model(cfg.model, k, data, cfg.recipe())
        if out[name].status == "diverged":
            raise TrainingDiverged(f"{out[name].label}: {out[name].message} (upstream treats a batch loss "
                                   f"above {UPSTREAM_MAX_LOSS:g} as a divergence; lower lr)")
    return Pair(out["dense"], out["dka"], data)


# ============================================================================ dissection
def broden_folder(cfg: Config, data: Data) -> Path:
    """The Broden folder to dissect on: `broden_root`, or the concept world's validation split exported."""
    if cfg.broden_root is not None:
        return resolve_path(cfg.broden_root)
    return world_broden(data.world, progress=cfg.progress)


def dissect_model(cfg: Config, model: nn.Module, broden_root: Path, input_size: int):
    """Network Dissection (`netanatomy.dissect`) of `cfg.layer` of `model`: its LayerDissection."""
    return dissect(model, [cfg.layer], broden_root, cfg.dissection, input_size=input_size)[cfg.layer]


def dissect_pair(cfg: Config, pair: Pair, broden_root: Path) -> dict:
    """{model label: LayerDissection of `cfg.layer`} for the dense and the DKA trunk."""
    return {t.label: dissect_model(cfg, t.model, broden_root, pair.data.input_size) for t in pair.both}


def _summary_row(name: str, summary: dict) -> dict:
    row = {"model": name, "units": summary["units"], "interpretable": summary["interpretable"],
           "unique_concepts": summary["unique_concepts"]}
    row["interpretable_share"] = row["interpretable"] / max(row["units"], 1)
    for cat, n in (summary.get("per_category") or {}).items():
        row[f"{cat}_detectors"] = n
    return row


def dissection_table(dissections: dict, with_published: bool = True) -> pd.DataFrame:
    """Both trunks' dissection counts side by side, plus the published ResNet-18 numbers (labelled as context)."""
    df = pd.DataFrame([_summary_row(name, d.summary()) for name, d in dissections.items()]).fillna(0)
    df["source"] = "this run"
    if with_published:
        p = method.PUBLISHED
        df = pd.concat([df, pd.DataFrame([{"model": p["model"], "units": p["units"], "interpretable": p["interpretable"],
                                           "unique_concepts": p["unique_concepts"],
                                           "interpretable_share": p["interpretable"] / p["units"],
                                           "scene_detectors": p["scene_detectors"],
                                           "source": "published (Sun et al. 2019), context only"}])],
                       ignore_index=True)
    cols = ["model", "source", "units", "interpretable", "interpretable_share", "unique_concepts"]
    return df[cols + [c for c in df.columns if c not in cols]]


def detectors_frame(dissections: dict, iou_threshold: float) -> pd.DataFrame:
    """Long table: model, category, detectors (units whose best label, with IoU >= threshold, is of the
    category), every category of the tally (zeros included)."""
    tallies = {name: d.tally for name, d in dissections.items()}
    return detectors_per_category(tallies, iou_threshold).rename(columns={"layer": "model"})


def unit_labels(dissection) -> pd.DataFrame:
    """(unit 0-based) -> label, category, iou from a LayerDissection's tally (1-based units)."""
    tally = dissection.tally
    df = pd.DataFrame({"unit": tally["unit"].astype(int) - 1, "label": tally["label"].astype(str),
                       "category": tally["category"].astype(str), "iou": tally["score"].astype(float)})
    return df.set_index("unit").sort_index()


# ============================================================================ concentration and the K sweep
@dataclasses.dataclass
class Concentration:
    """Explanation concentration of both models on the validation set."""

    table: pd.DataFrame          # model, k, mean/median share of the top-k units, accuracy
    curves: pd.DataFrame         # model, units, share
    per_image: pd.DataFrame      # model, share


def concentration_stats(cfg: Config, pair: Pair) -> Concentration:
    """Share of the true-class explanation carried by the top-K units (K = cfg.k), DKA versus dense."""
    rows, curves, per = [], [], []
    for t in pair.both:
        res = method.unit_contributions(t.model, cfg.layer, pair.data.val, batch_size=cfg.batch_size,
                                        device=cfg.device, progress=cfg.progress)
        contrib = res["contrib"]
        share = method.concentration(contrib, cfg.k)
        half = float((method.concentration_curve(contrib, contrib.shape[1])["share"] < 0.5).sum() + 1)
        rows.append({"model": t.label, "top_k": cfg.k, "mean_share": float(share.mean()),
                     "median_share": float(share.median()), "units_for_half": half,
                     "val_acc": float((res["pred"] == res["target"]).float().mean())})
        curves.append(method.concentration_curve(contrib, 20).assign(model=t.label))
        per.append(pd.DataFrame({"model": t.label, "share": share.numpy()}))
    curves = pd.concat(curves, ignore_index=True)
    return Concentration(pd.DataFrame(rows), curves[["model", "units", "share"]], pd.concat(per, ignore_index=True))


SWEEP_COLUMNS = ["k", "model", "status", "epochs", "val_acc", "interpretable", "unique_concepts", "concentration"]


def k_sweep(cfg: Config, pair: Pair, broden_root: Path) -> pd.DataFrame:
    """Train one model per K in `cfg.k_sweep` (None: the dense head, K = D) for `sweep_epochs` epochs,
    dissect each trunk and measure its concentration (one cached row per K); a diverged run is
    listed as such."""
    recipe = cfg.recipe(cfg.sweep_epochs or cfg.epochs)
    rows = []
    for k in tqdm(cfg.k_sweep, desc="K sweep", disable=not cfg.progress, leave=False):
        def compute(_checkpoint, k=k) -> dict:
            t = train_model(cfg.model, k, pair.data, recipe)
            row = {"k": cfg.D if k is None else k, "model": "dense (K = D)" if k is None else f"DKA K={k}",
                   "status": t.status, "epochs": recipe.epochs, "val_acc": t.val_acc, "interpretable": float("nan"),
                   "unique_concepts": float("nan"), "concentration": float("nan")}
            if t.status == "ok":
                summary = dissect_model(cfg, t.model, broden_root, pair.data.input_size).summary()
                res = method.unit_contributions(t.model, cfg.layer, pair.data.val, batch_size=cfg.batch_size,
                                                device=cfg.device, progress=False)
                row.update(interpretable=summary["interpretable"], unique_concepts=summary["unique_concepts"],
                           concentration=float(method.concentration(res["contrib"], cfg.k).mean()))
            return row

        path = cache.entry(("dka", "sweep"), f"k{k or 'D'}", train=model_entry(cfg.model, k, pair.data, recipe).name,
                           dissect=cfg.dissection.key(), root=str(broden_root), layer=cfg.layer, conc_k=cfg.k,
                           input_size=pair.data.input_size)
        rows.append(cache.cached(path, compute))
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


def explained_images(cfg: Config, data: Data) -> list[int]:
    """The `cfg.explain_images` validation images of the explanation pages (seeded draw, sorted)."""
    n = min(cfg.explain_images, len(data.val))
    return sorted(np.random.default_rng(cfg.seed).choice(len(data.val), n, replace=False).tolist())
