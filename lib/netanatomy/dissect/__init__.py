"""Network Dissection (D. Bau, B. Zhou, A. Khosla, A. Oliva, A. Torralba, *Network Dissection:
Quantifying Interpretability of Deep Visual Representations*, CVPR 2017; code NetDissect and
NetDissect-Lite): which units of a convolutional network detect which concepts of a Broden-format
data set, scored by the IoU of each unit's thresholded activation mask with each concept's labels.

- `method`: the paper's math (its formulas in the docstring): the per-unit quantile threshold and
  top images (`UnitThresholds`), the vectorised tally of mask/label overlaps (`tally_batch`,
  `UnitTally`), IoU and the tally.csv table (`iou_from_counts`, `make_tally`), the two ways of counting detectors
  (`tally_summary`), the receptive-field-centred upsampling, and the published numbers (`PUBLISHED`).
- `run`: `DissectConfig` (how to dissect) and the notebook's `Config`; the cached, resumable
  two-pass `dissect`; `world_broden` (the concept world as Broden); the notebook's `study`.
- `tables`: the result tables (summary, detectors per category, planted coverage) and tally files.
- `published`: the paper's published numbers read from NetDissect's files (the .mat behind the
  cross-network figure, the per-unit CSVs) and counted both ways.
- `figures`: plots (the paper's cross-network figure too), the unit gallery, the HTML report
  (`write_report`) and `describe`.
"""

from . import figures, method, published, run, tables

__all__ = ["figures", "method", "published", "run", "tables"]
