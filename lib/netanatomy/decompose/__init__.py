"""Decomposing the Deep: Finding Class-Specific Filters in Deep CNNs (Badola, Roy, Padmanabhan and Lal,
arXiv 2112.07719; upstream akshaybadola/decomposing-the-deep), with its CSG baseline (Liang et al.,
"Training Interpretable Convolutional Neural Networks by Differentiating Class-specific Filters",
ECCV 2020).

- `method`: the paper's math: influential features from top-k frequency histograms, the decomposed
  head, finetuning, essentiality under noise, mutual information between index sets, and CSG's gate
  matrix, loss and training; `PUBLISHED` and `SEED_REFERENCE` hold the reference numbers.
- `run`: the notebook's `Config`, its `Setup` (subject, fit / eval / training parts, cached
  features), index and CSG checkpoint files, and the cached studies behind each table.
- `figures`: the notebook's plots and the `describe_*` findings prose.
"""

from . import figures, method, run

__all__ = ["figures", "method", "run"]
