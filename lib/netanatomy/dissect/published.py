"""The paper's published numbers, read from NetDissect's own files (CSAILVision/NetDissect ``plot/``).

- `read_published_figure(mat)`: ``semantics_cvpr_release.mat``, the numbers behind the paper's
  cross-network figure of unique detectors per category (27 networks x 7 concepts).
- `published_counts(folder)`: the detector counts of the published per-unit CSVs (last conv layer
  of five networks) under both countings of `method.tally_summary`; under 'paper' they equal the
  .mat's rows exactly (tested).
- `load_published(mat, csvs)`: both for the notebook, each part skipped with a note when absent.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from ..errors import DataError
from ..runtime import resolve_path
from .method import COUNTINGS, PUBLISHED_CONCEPTS, PUBLISHED_CSV, tally_summary
from .tables import read_tally


def read_published_figure(path: str | Path) -> pd.DataFrame:
    """NetDissect's ``semantics_cvpr_release.mat`` as a long table: network, layer, concept,
    detectors, unique detectors (27 networks x 7 concepts in the paper's release)."""
    path = resolve_path(path)
    expected = "NetDissect's semantics_cvpr_release.mat (struct stat with networks_name, num_detectors, ...)"
    try:
        stat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["stat"]
        names, layers = [str(n) for n in stat.networks_name], [str(n) for n in stat.layers_name]
        concepts = [str(c) for c in stat.concepts]
        det, uniq = np.atleast_2d(stat.num_detectors), np.atleast_2d(stat.num_uniquedetectors)
    except FileNotFoundError:
        raise DataError(path, "file not found", expected=expected) from None
    except Exception as exc:  # noqa: BLE001 - any failure to read it means it is not that file
        raise DataError(path, f"cannot be read ({type(exc).__name__}: {str(exc)[:120]})", expected=expected) from exc
    if det.shape != (len(names), len(concepts)) or uniq.shape != det.shape or len(layers) != len(names):
        raise DataError(path, f"holds {det.shape} detector counts for {len(names)} networks and {len(concepts)} "
                              f"concepts", expected=expected)
    return pd.DataFrame([{"network": n, "layer": layers[i], "concept": c, "detectors": int(det[i, j]),
                          "unique detectors": int(uniq[i, j])}
                         for i, n in enumerate(names) for j, c in enumerate(concepts)])


def published_counts(folder: str | Path, iou_threshold: float = 0.04) -> pd.DataFrame:
    """The detector counts of NetDissect's published per-unit CSVs in `folder` (those of
    `method.PUBLISHED_CSV` present), under both countings: one row per network, concept and counting."""
    folder = resolve_path(folder)
    rows = []
    for csv_name, network in PUBLISHED_CSV.items():
        path = folder / f"{csv_name}.csv"
        if not path.is_file():
            continue
        tally = read_tally(path)
        for counting in COUNTINGS:
            s = tally_summary(tally, iou_threshold, None, counting)
            for concept in PUBLISHED_CONCEPTS:
                det = s["interpretable"] if concept == "all" else s["per_category"].get(concept, 0)
                uniq = s["unique_concepts"] if concept == "all" else s["unique_per_category"].get(concept, 0)
                rows.append({"network": network, "csv": path.name, "counting": counting, "concept": concept,
                             "detectors": det, "unique detectors": uniq})
    return pd.DataFrame(rows, columns=["network", "csv", "counting", "concept", "detectors", "unique detectors"])


@dataclasses.dataclass
class Published:
    """The paper's published numbers for the notebook: the figure's table (None when absent), the
    CSVs' counts beside it (None when absent), and a note for each part that is missing."""

    figure: pd.DataFrame | None
    counts: pd.DataFrame | None
    notes: list[str]

    def comparison(self) -> pd.DataFrame | None:
        """Per CSV network and concept: the .mat's numbers beside the CSV's under both countings."""
        if self.counts is None or not len(self.counts):
            return None
        wide = self.counts.pivot_table(index=["network", "concept"], columns="counting",
                                       values=["detectors", "unique detectors"], aggfunc="first")
        wide.columns = [f"{v} ({c}, CSV)" for v, c in wide.columns]
        table = wide.reset_index()
        if self.figure is not None:
            mat = self.figure.rename(columns={"detectors": "detectors (.mat)",
                                              "unique detectors": "unique detectors (.mat)"})
            table = table.merge(mat.drop(columns="layer"), on=["network", "concept"], how="left")
        order = {c: i for i, c in enumerate(PUBLISHED_CONCEPTS)}
        return table.sort_values(["network", "concept"], key=lambda col: col.map(order) if col.name == "concept"
                                 else col, kind="stable").reset_index(drop=True)


def load_published(mat: str | Path | None, csvs: str | Path | None, iou_threshold: float = 0.04) -> Published:
    """`read_published_figure(mat)` and `published_counts(csvs)`, each skipped with a note when absent."""
    notes, figure, counts = [], None, None
    mat_path, csv_dir = resolve_path(mat), resolve_path(csvs)
    if mat_path is None:
        notes.append("The paper's cross-network figure is not drawn (`published_mat` is None).")
    elif not mat_path.is_file():
        notes.append(f"The paper's cross-network figure is skipped: `{mat}` is absent (NetDissect's "
                     f"`plot/semantics_cvpr_release.mat`; set `published_mat` to its path).")
    else:
        figure = read_published_figure(mat_path)
    found = csv_dir is not None and csv_dir.is_dir() and any((csv_dir / f"{n}.csv").is_file() for n in PUBLISHED_CSV)
    if csv_dir is None:
        notes.append("The published per-unit tallies are not counted (`published_csvs` is None).")
    elif not found:
        notes.append(f"The published per-unit tallies are skipped: no `{'`, `'.join(PUBLISHED_CSV)}` .csv in "
                     f"`{csvs}` (NetDissect's `plot/` folder; set `published_csvs`).")
    else:
        counts = published_counts(csv_dir, iou_threshold)
    return Published(figure, counts, notes)
