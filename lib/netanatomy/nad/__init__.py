"""NAD: Architecture Disentanglement for Deep Neural Networks (Hu et al., ICCV 2021).

- `method`: the paper's math: the batched per-class path search, activation maps, 2x2 mosaic hit
  rates and the sub-architecture IoU (with upstream's constants, cited).
- `images`: the images a search and the maps read (a data set's raw images, upstream's augmentation).
- `run`: the notebooks' configurations, the cached search on a subject and the result tables of
  nad_findpath, nad_hitrate and nad_subarch, with the verdicts of their claims.
- `figures`: the plots, the class explorer and the `describe_*` sentences of the findings.
"""

from . import figures, images, method, run

__all__ = ["figures", "images", "method", "run"]
