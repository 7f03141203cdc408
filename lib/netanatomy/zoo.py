"""The default run's trained concept-world models, trained once and cached by configuration."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

import pandas as pd
import torch
from torch import nn

from . import data, models
from .errors import ParamError
from .runtime import atomic_save, cache_dir, cache_key, pick_device, seed_everything
from .train import TrainConfig, evaluate, fit, recipe_key
from .world import WorldConfig, fingerprint as world_fingerprint

# The default recipe for the small concept-world nets (documented accuracy in README).
DEFAULT_RECIPE = TrainConfig(epochs=6, batch_size=128, lr=0.05, optimizer="sgd", weight_decay=5e-4,
                             schedule="cosine", seed=0)


@dataclasses.dataclass
class ZooEntry:
    """A trained model with what made it: name, world, recipe, history and validation accuracy."""

    name: str
    model: nn.Module
    world: WorldConfig
    recipe: TrainConfig
    history: pd.DataFrame
    val_acc: float
    path: Path


def cache_folder(name: str, world: WorldConfig, recipe: TrainConfig, width_mult: float = 1.0) -> Path:
    """Where `trained` keeps a model: keyed by name, width, world (with renderer version) and recipe."""
    key = cache_key(zoo_version=2, name=name, width_mult=width_mult, world=world_fingerprint(world),
                    recipe=recipe_key(recipe))
    return cache_dir("zoo", f"{name}-{key}")


def trained(name: str = "small_vgg", world: WorldConfig | None = None, recipe: TrainConfig | None = None,
            width_mult: float = 1.0, device: str = "auto", progress: bool = True) -> ZooEntry:
    """Model `name` trained on the concept world by `recipe`; loaded from the cache when present.

    The cache file is keyed by (name, width_mult, world, recipe less device/progress), so every
    notebook that asks for the same configuration gets the same weights. Training resumes from its
    last epoch checkpoint if it was interrupted.
    """
    world = world or WorldConfig()
    recipe = dataclasses.replace(recipe or DEFAULT_RECIPE, device=device, progress=progress)
    key_recipe = recipe_key(recipe)
    folder = cache_folder(name, world, recipe, width_mult)
    final = folder / "model.pt"
    val_ds = data.get_dataset("concept_world", split="val", world=world, progress=progress)
    seed_everything(recipe.seed)  # the initial weights depend on the recipe's seed only
    model = models.build(name, len(val_ds.classes), width_mult=width_mult)
    if final.exists():
        saved = torch.load(final, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        history = pd.DataFrame(saved["history"])
    else:
        train_ds = data.get_dataset("concept_world", split="train", train_aug=True, world=world, progress=progress)
        history = fit(model, train_ds, val_ds, recipe, out_dir=folder)
        model.cpu()
        atomic_save({"model": model.state_dict(), "history": history.to_dict("records"), "name": name,
                     "world": dataclasses.asdict(world), "recipe": key_recipe}, final)
        (folder / "checkpoint.pt").unlink(missing_ok=True)
    model.eval().to(pick_device(device))
    val_acc = float(history["val_acc"].iloc[-1]) if "val_acc" in history else float("nan")
    return ZooEntry(name, model, world, recipe, history, val_acc, final)


def validation_accuracy(entry: ZooEntry, device: str = "auto") -> float:
    """Recompute the entry's validation accuracy (a check that the cached weights are what they claim)."""
    return evaluate(entry.model, data.get_dataset("concept_world", split="val", world=entry.world), device=device)["acc"]


# Scales of the built-in data: "default" for `make reproduce`, "smoke" for the notebook tests.
SCALES: dict[str, tuple[WorldConfig, TrainConfig]] = {
    "default": (WorldConfig(), DEFAULT_RECIPE),
    "smoke": (WorldConfig(image_size=32, n_train=600, n_val=200),
              dataclasses.replace(DEFAULT_RECIPE, epochs=2, batch_size=64)),
}


@dataclasses.dataclass
class Subject:
    """A trained classifier to analyse, with its data: what every paper notebook starts from."""

    model_name: str
    model: nn.Module
    train_ds: object
    val_ds: object
    classes: list[str]
    input_size: int
    dataset: str
    val_acc: float | None = None


def world_for(scale: str) -> WorldConfig:
    """The concept-world configuration of a scale ('default' or 'smoke')."""
    if scale not in SCALES:
        raise ParamError("scale", f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    return SCALES[scale][0]


def subject(model: str = "small_vgg", dataset: str = "concept_world", data_root: str | None = None,
            weights: str | None = None, scale: str = "default", device: str = "auto",
            progress: bool = True, train_aug: bool = False) -> Subject:
    """The classifier and data a notebook analyses.

    On the concept world without `weights`, the zoo's model trained at `scale`; otherwise
    `models.build(model)` on `dataset` at `data_root` with `weights` loaded (a clear error names a
    missing path). `train_aug` selects the training transforms for `train_ds`.
    """
    world = world_for(scale)
    input_sizes = {"concept_world": world.image_size, "cifar10": 32}
    if dataset == "concept_world" and weights is None:
        entry = trained(model, world, SCALES[scale][1], device=device, progress=progress)
        net, val_acc = entry.model, entry.val_acc
    else:
        val_acc = None
    train_ds = data.get_dataset(dataset, data_root, split="train", train_aug=train_aug, world=world, progress=progress)
    val_ds = data.get_dataset(dataset, data_root, split="val", world=world, progress=progress)
    classes = list(val_ds.classes)
    if val_acc is None:
        net = models.build(model, len(classes), weights=weights).eval().to(pick_device(device))
    return Subject(model, net, train_ds, val_ds, classes, input_sizes.get(dataset, 224), dataset, val_acc)


def report(names: Sequence[str], scale: str = "default", device: str = "auto", progress: bool = True):
    """Accuracy table of the zoo models at `scale` and their validation confusion matrices (row-normalised)."""
    from .stats import confusion_frame
    from .train import predict

    world = world_for(scale)
    val_ds = data.get_dataset("concept_world", split="val", world=world, progress=progress)
    rows, confusions = [], {}
    for name in names:
        entry = trained(name, world, SCALES[scale][1], device=device, progress=progress)
        logits, labels = predict(entry.model, val_ds, device=device)
        pred = logits.argmax(1)
        confusions[name] = confusion_frame(labels.numpy(), pred.numpy(), val_ds.classes)
        cm = confusions[name].to_numpy()
        true_i, pred_j = np.unravel_index((cm - np.diag(np.diag(cm))).argmax(), cm.shape)
        rows.append({"model": name, "val_acc": float((pred == labels).float().mean()),
                     "train_acc_last_epoch": float(entry.history["train_acc"].iloc[-1]),
                     "epochs": int(entry.history["epoch"].iloc[-1]),
                     "params": sum(p.numel() for p in entry.model.parameters()),
                     "top_confusion": f"{val_ds.classes[true_i]} -> {val_ds.classes[pred_j]} ({cm[true_i, pred_j]:.2f})"})
    return pd.DataFrame(rows), confusions
