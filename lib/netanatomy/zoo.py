"""The concept world's trained models: trained once per configuration and cached (`trained`), and
the accuracy table of the `concept_world` notebook (`report`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from torch import nn

from . import data, models
from .cache import cached, entry
from .config import RunConfig, choice, integer, items, param
from .runtime import pick_device, seed_everything
from .stats import confusion_frame
from .train import TrainConfig, fit, predict, recipe_key
from .world import WorldConfig, fingerprint as world_fingerprint


@dataclasses.dataclass
class Config(RunConfig):
    """The concept_world notebook's parameters."""

    models: list = param(["small_vgg", "small_resnet"], items(choice(*models.MODEL_NAMES), unique=True),
                         "default concept-world models to train and evaluate")
    n_samples: int = param(5, integer(1, 64), "sample images to show")


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


def cache_path(name: str, world: WorldConfig, recipe: TrainConfig, width_mult: float = 1.0) -> Path:
    """Where `trained` keeps a model: keyed by name, width, world (with renderer version) and recipe."""
    return entry("zoo", name, zoo_version=3, width_mult=width_mult, world=world_fingerprint(world),
                 recipe=recipe_key(recipe))


def trained(name: str, world: WorldConfig, recipe: TrainConfig, width_mult: float = 1.0, device: str = "auto",
            progress: bool = True) -> ZooEntry:
    """Model `name` trained on the concept world `world` by `recipe`; loaded from the cache when present.

    Cached by (name, width_mult, world with its renderer version, recipe less device and progress),
    so every notebook that asks for the same configuration gets the same weights; an interrupted
    training resumes from its last epoch.
    """
    recipe = dataclasses.replace(recipe, device=device, progress=progress)
    val_ds = data.get_dataset("concept_world", split="val", world=world, progress=progress)
    seed_everything(recipe.seed)  # the initial weights depend on the recipe's seed only
    model = models.build(name, len(val_ds.classes), width_mult=width_mult)

    def train(checkpoint):
        train_ds = data.get_dataset("concept_world", split="train", train_aug=True, world=world, progress=progress)
        history = fit(model, train_ds, val_ds, recipe, checkpoint=checkpoint)
        return {"model": model.cpu().state_dict(), "history": history.to_dict("records")}

    path = cache_path(name, world, recipe, width_mult)
    saved = cached(path, train, label=f"zoo: train {name} ({recipe.epochs} epochs, {world.n_train} images, "
                                      f"{world.image_size} px)")
    model.load_state_dict(saved["model"])
    model.eval().to(pick_device(device))
    history = pd.DataFrame(saved["history"])
    val_acc = float(history["val_acc"].iloc[-1]) if "val_acc" in history else float("nan")
    return ZooEntry(name, model, world, recipe, history, val_acc, path)


def report(names: Sequence[str], world: WorldConfig, recipe: TrainConfig, device: str = "auto",
           progress: bool = True) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Accuracy table of the zoo models and their validation confusion matrices (row-normalised)."""
    val_ds = data.get_dataset("concept_world", split="val", world=world, progress=progress)
    rows, confusions = [], {}
    for name in names:
        zoo_entry = trained(name, world, recipe, device=device, progress=progress)
        logits, labels = predict(zoo_entry.model, val_ds, device=device)
        pred = logits.argmax(1)
        confusions[name] = confusion_frame(labels.numpy(), pred.numpy(), val_ds.classes)
        cm = confusions[name].to_numpy()
        true_i, pred_j = np.unravel_index((cm - np.diag(np.diag(cm))).argmax(), cm.shape)
        rows.append({"model": name, "val_acc": float((pred == labels).float().mean()),
                     "train_acc_last_epoch": float(zoo_entry.history["train_acc"].iloc[-1]),
                     "epochs": int(zoo_entry.history["epoch"].iloc[-1]),
                     "params": sum(p.numel() for p in zoo_entry.model.parameters()),
                     "top_confusion": f"{val_ds.classes[true_i]} -> {val_ds.classes[pred_j]} ({cm[true_i, pred_j]:.2f})"})
    return pd.DataFrame(rows), confusions
