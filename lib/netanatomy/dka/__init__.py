"""Dynamic-K activation (Sun, Ravi & Singh, ICCV 2019; upstream sunyiyou/dynamic-k-activation).

- `method`: the paper's math: the top-K routed head `TopKRouteLinear` and its swap into any model
  (`to_dka`, `build`, upstream checkpoints), the per-image explanation (`unit_contributions`,
  `concentration`) and the published numbers (`PUBLISHED`).
- `run`: the notebook's `Config` (it composes a `netanatomy.dissect.run.DissectConfig`) and its
  cached studies: the dense baseline and the DKA model trained with the same trunk, seed and recipe
  (`train_pair`), both trunks dissected (`dissect_pair`), explanation concentration and the K sweep.
- `figures`: plots, the explanation pages like upstream ``explain.html``, the dissection reports and
  the `describe_*` sentences of the findings.
"""

from . import figures, method, run

__all__ = ["figures", "method", "run"]
