"""Network Dissection's result tables and tally files, from `run.LayerDissection` results (or tally
DataFrames); nothing here dissects.

- `summary_table`, `detectors_per_category`, `planted_coverage`: each under a `counting` of
  `method.tally_summary` (the library's default is NetDissect-Lite's 'top_label'; the notebook's
  `Config.counting` is the paper's).
- `save_results`, `read_tally`: tally.csv and thresholds.csv per layer (ours, or a published
  NetDissect / NetDissect-Lite tally.csv; `published` reads the paper's files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..errors import DataError
from ..runtime import atomic_write_csv
from .method import NO_LABEL, tally_summary
from .run import LayerDissection

#: The columns every tally.csv has.
TALLY_BASE = ("unit", "category", "label", "score")


def _summaries(results: Mapping[str, LayerDissection | pd.DataFrame], iou_threshold: float, counting: str):
    for layer, res in results.items():
        tally = res.tally if isinstance(res, LayerDissection) else res
        thr = res.iou_threshold if isinstance(res, LayerDissection) else iou_threshold
        cats = res.categories if isinstance(res, LayerDissection) else None
        yield layer, tally_summary(tally, thr, cats, counting)


def summary_table(results: Mapping[str, LayerDissection | pd.DataFrame], iou_threshold: float = 0.04,
                  counting: str = "top_label") -> pd.DataFrame:
    """One row per layer: units, detectors, share, unique detectors under both countings, and the
    detectors per category under `counting`."""
    rows = []
    other = {"paper": "top_label", "top_label": "paper"}[counting]
    for (layer, s), (_, t) in zip(_summaries(results, iou_threshold, counting),
                                  _summaries(results, iou_threshold, other)):
        row = {"layer": layer, "units": s["units"], "detectors": s["interpretable"],
               "detector share": round(s["interpretable"] / max(1, s["units"]), 3),
               f"unique detectors ({counting})": s["unique_concepts"],
               f"unique detectors ({other})": t["unique_concepts"]}
        row.update({f"{c} detectors": n for c, n in s["per_category"].items()})
        rows.append(row)
    return pd.DataFrame(rows)


def detectors_per_category(results: Mapping[str, LayerDissection | pd.DataFrame], iou_threshold: float = 0.04,
                           unique: bool = False, counting: str = "top_label") -> pd.DataFrame:
    """Long table (layer, category, detectors or unique concepts) under `counting` for the per-layer plot."""
    column = "unique concepts" if unique else "detectors"
    return pd.DataFrame([{"layer": layer, "category": c, column: n}
                         for layer, s in _summaries(results, iou_threshold, counting)
                         for c, n in s["unique_per_category" if unique else "per_category"].items()])


def _detected(res: LayerDissection, thr: float, counting: str) -> set[tuple[str, str]]:
    """(category, label) pairs with a detector in the layer under `counting`."""
    if counting == "top_label":
        det = res.tally[res.tally["score"] >= thr]
        return set(zip(det["category"], det["label"]))
    return {(cat, lab) for cat in res.categories
            for lab in res.tally.loc[res.tally[f"{cat}-iou"] >= thr, f"{cat}-label"] if lab != NO_LABEL}


def planted_coverage(results: Mapping[str, LayerDissection], iou_threshold: float | None = None,
                     counting: str = "top_label") -> pd.DataFrame:
    """Per category: concepts of the data set (labels present), and how many have a detector in any
    layer under `counting`. For the concept world these are the world's planted concepts."""
    any_res = next(iter(results.values()))
    thr = any_res.iou_threshold if iou_threshold is None else iou_threshold
    found = set().union(*(_detected(res, thr, counting) for res in results.values()))
    rows = []
    labels = any_res.labels.assign(truth=any_res.truth)
    for cat in any_res.categories:
        present = labels[(labels["category"] == cat) & (labels["truth"] > 0)]
        hit = sorted(lab for c, lab in found if c == cat)
        rows.append({"category": cat, "concepts": len(present), "with detector": len(hit),
                     "detected": ", ".join(hit)})
    return pd.DataFrame(rows)


def safe_name(name: str) -> str:
    """A layer name as a folder name (characters other than letters, digits and -_. become _)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def save_results(results: Mapping[str, LayerDissection], out_dir: str | Path) -> dict[str, Path]:
    """Write ``<out_dir>/<layer>/tally.csv`` and ``thresholds.csv`` per layer; return the tally paths."""
    out_dir = Path(out_dir)
    paths = {}
    for layer, res in results.items():
        folder = out_dir / safe_name(layer)
        paths[layer] = atomic_write_csv(res.tally, folder / "tally.csv")
        atomic_write_csv(pd.DataFrame({"unit": np.arange(1, res.units + 1), "threshold": res.thresholds}),
                         folder / "thresholds.csv")
    return paths


def read_tally(path: str | Path) -> pd.DataFrame:
    """Load a tally.csv (ours or a published NetDissect / NetDissect-Lite one) as a DataFrame.

    Checks the columns ``unit, category, label, score`` and the per-category groups; empty
    labels become '-', numbers become numbers; rows are sorted by score as in tally.csv.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "tally file not found", expected="a tally.csv written by NetDissect(-Lite) or dissect")
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[])
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot be read as CSV ({str(exc).splitlines()[0][:200]})") from exc
    missing = [c for c in TALLY_BASE if c not in df.columns]
    if missing:
        raise DataError(path, f"lacks column(s) {', '.join(missing)}",
                        expected="columns unit,category,label,score,<cat>-label,<cat>-truth,...")
    for c in df.columns:
        if c == "score" or c.endswith(("-truth", "-activation", "-intersect", "-iou")):
            values = pd.to_numeric(df[c].replace("", np.nan), errors="coerce")
            if values.isna().any() and c == "score":
                row = int(np.flatnonzero(values.isna())[0]) + 2
                raise DataError(path, f"row {row}: score {df[c].iloc[row - 2]!r} is not a number")
            df[c] = values.fillna(0.0)
        elif c in ("category", "label") or c.endswith("-label"):
            df[c] = df[c].astype(str).replace("", NO_LABEL)
    df["unit"] = pd.to_numeric(df["unit"], errors="coerce")
    if df["unit"].isna().any():
        raise DataError(path, "column 'unit' holds non-integers")
    df["unit"] = df["unit"].astype(int)
    return df.sort_values(["score", "unit"], ascending=[False, True], kind="stable").reset_index(drop=True)
