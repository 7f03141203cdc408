"""Decomposing the Deep: Finding Class-Specific Filters in Deep CNNs (Badola, Roy, Padmanabhan and Lal,
arXiv 2112.07719; upstream akshaybadola/decomposing-the-deep), with its CSG baseline (Liang et al.,
"Training Interpretable Convolutional Neural Networks by Differentiating Class-specific Filters",
ECCV 2020).

- `method`: the paper's math: influential features from top-k frequency histograms, the decomposed
  head, finetuning, essentiality under noise, mutual information between index sets, and the random
  controls; `PUBLISHED` and `SEED_REFERENCE` hold the reference numbers with their sources.
- `csg`: CSG's gate matrix, loss, training and index selection.
- `files`: index files and CSG checkpoints in upstream's layouts; the up-front path checks.
- `run`: the notebook's `Config`, its `Setup` (subject, fit / eval / training parts, cached
  features), the cached finetuning and CSG baseline.
- `tables`: the notebook's tables (k sweep, accuracy, essentiality, random controls with verdicts,
  mutual information, head size), computed from the setup.
- `figures`: the notebook's plots and the `describe_*` findings prose.
"""

from . import csg, figures, files, method, run, tables

__all__ = ["csg", "figures", "files", "method", "run", "tables"]
