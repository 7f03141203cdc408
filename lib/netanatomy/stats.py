"""Counting and summary statistics: FLOPs (torch.utils.flop_counter), parameters, accuracy, confusions,
and the confidence intervals that decide every verdict ("held", "did not hold", "inconclusive")."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats as scipy_stats
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import ParamError

FLOPS_CONVENTION = "FLOPs count 2 per multiply-add (torch.utils.flop_counter)"


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: Sequence[int] = (1, 3, 32, 32)) -> int:
    """Forward FLOPs of one pass at `input_shape` (2 per multiply-add, as torch.utils.flop_counter counts)."""
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    x = torch.zeros(*input_shape, device=param.device if param is not None else "cpu")
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy as a fraction."""
    return (logits.argmax(1) == labels).float().mean().item()


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """Counts C[true, predicted]."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    return np.bincount(labels * num_classes + predictions, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def confusion_frame(labels, predictions, class_names: Sequence[str], normalize: bool = True) -> pd.DataFrame:
    """Confusion matrix as a DataFrame (rows true, columns predicted), row-normalised by default."""
    cm = confusion_matrix(labels, predictions, len(class_names)).astype(float)
    if normalize:
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    return pd.DataFrame(cm, index=pd.Index(class_names, name="true"), columns=pd.Index(class_names, name="predicted"))


def class_counts(labels_by_split: dict[str, Sequence[int]], class_names: Sequence[str]) -> pd.DataFrame:
    """Images per class (rows) and split (columns)."""
    return pd.DataFrame({split: np.bincount(np.asarray(labels), minlength=len(class_names))
                         for split, labels in labels_by_split.items()},
                        index=pd.Index(class_names, name="class"))


def within_pair_error_share(cm: pd.DataFrame, pairs: Sequence[tuple[str, str]]) -> float:
    """Share of off-diagonal confusion mass (row-normalised matrix) that falls within the given class pairs."""
    m = cm.to_numpy(dtype=float).copy()
    np.fill_diagonal(m, 0.0)
    pos = {name: i for i, name in enumerate(cm.index)}
    within = sum(m[pos[a], pos[b]] + m[pos[b], pos[a]] for a, b in pairs)
    return float(within / m.sum()) if m.sum() > 0 else float("nan")


# ----------------------------------------------------------------------------- intervals and verdicts
#: The three verdicts a comparison can reach.
HELD, NOT_HELD, INCONCLUSIVE = "held", "did not hold", "inconclusive"
#: the fewest values (seeds, classes) whose interval may decide a verdict
MIN_VERDICT_N = 3


@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean with its two-sided confidence interval (Student t over `n` values)."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    def __str__(self) -> str:
        return f"{self.mean:+.3g} [{self.low:+.3g}, {self.high:+.3g}]"

    def verdict(self, above: float = 0.0) -> str:
        """'held' when the whole interval lies above `above`, 'did not hold' when it lies at or
        below it, else 'inconclusive' (the interval allows either). Fewer than `MIN_VERDICT_N`
        values decide nothing: two values estimate the spread with one degree of freedom, and two
        equal differences (e.g. unit counts) give a zero-width interval that would pass as certain."""
        if self.n < MIN_VERDICT_N:
            return INCONCLUSIVE
        if self.low > above:
            return HELD
        if self.high <= above:
            return NOT_HELD
        return INCONCLUSIVE


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of `values` with its t-interval (n - 1 degrees of freedom); needs at least 2 values."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        raise ParamError("seeds", f"an interval needs at least 2 finite values, got {len(x)}")
    mean = float(x.mean())
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return Interval(mean, mean - half, mean + half, len(x), confidence)


def paired_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """Interval of the mean paired difference a - b (same seeds, mosaics or images in both)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ParamError("seeds", f"a paired comparison needs equal counts, got {a.shape} and {b.shape}")
    return mean_interval(a - b, confidence)
