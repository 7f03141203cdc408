"""The Heterogeneity Hypothesis (Li et al., CVPR 2021; arXiv 2006.16242): widen a ResNet, search its
channels with DHP hypernetwork convolutions, shrink it to a FLOPs budget and train the layer-wise
differentiated network (LW-DNA) against the regular baseline.

- `networks`: ResNets as channel configurations (latent vectors and convolutions), their FLOPs under
  upstream's two counting conventions and torch's, their parameters, and the ordinary network of a
  configuration.
- `method`: the paper's math: the settings, the hypernetwork convolutions, the search, channel
  scores, the binary search (`shrink`) and `materialise`.
- `run`: the notebook's `Config`, its data, the cached trainings (`experiment`), the result tables,
  the paired verdicts and `step` (the heavy step of `python -m netanatomy run heterogeneity`, also
  under torchrun).
- `figures`: plots and the findings prose (`describe_*`).
"""

from . import figures, method, networks, run

__all__ = ["figures", "method", "networks", "run"]
