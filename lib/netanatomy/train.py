"""The one training loop: SGD/Adam/AdamW, cosine, one-cycle or step schedule, AMP and channels-last on CUDA,
an atomic checkpoint every epoch with exact resume, tqdm progress, and DDP under torchrun."""

from __future__ import annotations

import dataclasses
import os
import random
import time
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from .errors import NetanatomyError, ParamError, require
from .cache import Checkpoint
from .runtime import autocast, pick_device, seed_everything


SCHEDULES = ("cosine", "onecycle", "step", "constant")


class TrainingDiverged(NetanatomyError):
    """A batch loss exceeded `max_loss` or was not finite."""


@dataclasses.dataclass
class TrainConfig:
    """Recipe of one training run (all fields are plain values so they can be logged and hashed)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = "sgd"          # sgd | adam | adamw
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"        # cosine | onecycle (per step: warm-up then linear decay) | step | constant
    step_size: int = 30             # step schedule: divide lr by 1/gamma every step_size epochs
    gamma: float = 0.1
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True                # bf16 autocast, CUDA only
    channels_last: bool = True      # CUDA only
    num_workers: int = 0
    max_loss: float | None = None   # divergence guard: a batch loss above this (or NaN) stops training
    eval_every: int = 1             # validate after every n-th epoch and always after the last (0: only the last)
    progress: bool = True

    def __post_init__(self) -> None:
        require(isinstance(self.epochs, int) and self.epochs >= 0, "epochs", f"must be an integer >= 0, got {self.epochs!r}")
        require(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", f"must be an integer >= 1, got {self.batch_size!r}")
        require(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        require(self.optimizer in ("sgd", "adam", "adamw"), "optimizer", f"must be sgd, adam or adamw, got {self.optimizer!r}")
        require(self.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        require(isinstance(self.eval_every, int) and self.eval_every >= 0, "eval_every",
                f"must be an integer >= 0, got {self.eval_every!r}")
        require(0 <= self.label_smoothing < 1, "label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")


def _dist_info() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """The learning-rate schedule; one-cycle steps after every batch, the others after every epoch."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle" and total >= 8:  # shorter runs have no room for a warm-up: constant lr
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.25,
                                                   anneal_strategy="linear")
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _epoch: 1.0)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def recipe_key(cfg: TrainConfig) -> dict:
    """The fields of a recipe that decide what training learns (not the device, progress bars or workers)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("device", "progress", "num_workers")}


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    """The default loss: (mean cross-entropy, logits) of model(x) against y."""
    def loss_fn(model, x, y):
        logits = model(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing), logits
    return loss_fn


def fit(model: nn.Module, train_ds: Dataset, val_ds: Dataset | None, cfg: TrainConfig,
        checkpoint: Checkpoint | None = None, loss_fn: LossFn | None = None,
        stop_after_epoch: int | None = None) -> pd.DataFrame:
    """Train `model` on `train_ds` by `cfg`; returns the per-epoch metrics history.

    With `checkpoint` (a `cache.Checkpoint`), saves model, optimizer, scheduler, RNG state and
    history atomically after every epoch and resumes exactly from a saved state (a damaged one is
    set aside and training starts over). `loss_fn(model, x, y) -> (loss, logits)` replaces
    cross-entropy (for extra terms). `stop_after_epoch` ends this call after that epoch (an
    interruption, for tests). Under torchrun (WORLD_SIZE > 1) trains with DDP; `batch_size` is the
    global batch.
    """
    rank, world = _dist_info()
    device = _train_device(cfg, rank, world)
    require(cfg.batch_size % world == 0, "batch_size", f"{cfg.batch_size} is not divisible by the {world} processes")
    seed_everything(cfg.seed)
    model.to(device)
    if cfg.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(train_ds, batch_size=cfg.batch_size // world, sampler=sampler,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=cfg.num_workers > 0)
    optimizer = _make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    scheduler = _make_scheduler(optimizer, cfg, len(loader))
    checkpoint = checkpoint or Checkpoint(None)
    history: list[dict] = []
    state = checkpoint.load()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        history = state["history"]
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    per_step = scheduler if cfg.schedule == "onecycle" else None
    step = _Step(net, optimizer, loss_fn or cross_entropy_loss(cfg.label_smoothing), cfg, device, per_step)
    show = cfg.progress and rank == 0
    last = cfg.epochs if stop_after_epoch is None else min(cfg.epochs, stop_after_epoch)
    for epoch in range(len(history), last):
        sampler.set_epoch(epoch)
        loader.generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        metrics = step.epoch(tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False), epoch)
        if per_step is None:
            scheduler.step()
        row = {"epoch": epoch + 1, **metrics}  # lr: the rate of the epoch's last step
        due = epoch + 1 == cfg.epochs or (cfg.eval_every > 0 and (epoch + 1) % cfg.eval_every == 0)
        if val_ds is not None and rank == 0 and due:
            row.update({f"val_{k}": v for k, v in evaluate(model, val_ds, cfg.batch_size, device,
                                                             amp=cfg.amp, progress=False).items()})
        history.append(row)
        if show:
            tqdm.write("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        if rank == 0:
            checkpoint.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "rng": _rng_state(), "history": history,
                             "config": dataclasses.asdict(cfg)})
    model.eval()
    return pd.DataFrame(history)


def _train_device(cfg: TrainConfig, rank: int, world: int) -> torch.device:
    device = pick_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    return device


class _Step:
    """One epoch of optimisation steps (loss, divergence guard, backward, step) with running metrics."""

    def __init__(self, net: nn.Module, optimizer, loss_fn: LossFn, cfg: TrainConfig, device: torch.device,
                 scheduler=None):
        self.net, self.optimizer, self.loss_fn, self.cfg, self.device = net, optimizer, loss_fn, cfg, device
        self.scheduler = scheduler  # a per-step schedule (one-cycle), else None

    def epoch(self, batches, epoch: int) -> dict:
        cfg, device = self.cfg, self.device
        self.net.train()
        t0 = time.perf_counter()
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        lr = self.optimizer.param_groups[0]["lr"]
        for step, (x, y) in enumerate(batches):
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if cfg.channels_last and device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, cfg.amp):
                loss, logits = self.loss_fn(self.net, x, y)
            if cfg.max_loss is not None:
                value = loss.item()
                if not np.isfinite(value) or value > cfg.max_loss:
                    raise TrainingDiverged(f"training diverged at epoch {epoch + 1}, batch {step + 1}: "
                                           f"loss {value:.3g} > max_loss {cfg.max_loss}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            total_loss += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        return {"lr": lr, "train_loss": total_loss.item() / max(seen, 1),
                "train_acc": correct.item() / max(seen, 1), "seconds": time.perf_counter() - t0}


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int = 256, device: str | torch.device = "auto",
            amp: bool = True, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of the model in eval mode over a dataset of (image, label, ...) items, on CPU."""
    device = pick_device(device)
    model.eval().to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    logits, labels = [], []
    for batch in tqdm(loader, desc="predict", disable=not progress, leave=False):
        x, y = batch[0], batch[1]
        with autocast(device, amp):
            logits.append(model(x.to(device)).float().cpu())
        labels.append(torch.as_tensor(y))
    if not logits:
        raise ParamError("dataset", "is empty; nothing to evaluate")
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 256, device: str | torch.device = "auto",
             amp: bool = True, progress: bool = False) -> dict[str, float]:
    """Mean cross-entropy `loss` and top-1 `acc` (fraction) of the model on a dataset."""
    logits, labels = predict(model, dataset, batch_size, device, amp, progress)
    return {"loss": F.cross_entropy(logits, labels).item(), "acc": (logits.argmax(1) == labels).float().mean().item()}
