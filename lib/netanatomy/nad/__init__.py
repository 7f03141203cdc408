"""NAD: Architecture Disentanglement for Deep Neural Networks (Hu et al., ICCV 2021).

- `method`: the paper's math: the batched per-class path search, activation maps, 2x2 mosaic hit
  rates and the sub-architecture IoU (with upstream's constants, cited).
- `run`: the notebooks' configurations, the images a search reads, the cached search on a subject and
  the result tables of nad_findpath, nad_hitrate and nad_subarch.
- `figures`: the plots, the class explorer and the `describe_*` sentences of the findings.
"""

from . import figures, method, run

__all__ = ["figures", "method", "run"]
