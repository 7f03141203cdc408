"""Dynamic-K activation (Sun, Ravi & Singh, ICCV 2019; upstream sunyiyou/dynamic-k-activation).

- `method`: the paper's math: the top-K routed head `TopKRouteLinear` and its swap into any model
  (`to_dka`, `build`, upstream checkpoints), the per-image explanation (`unit_contributions`,
  `concentration`), `check_layer`, and what is cited (`PUBLISHED`, `PAPER_ACCURACY_CLAIM`,
  `UPSTREAM_RECIPE`).
- `run`: the notebook's `Config` (it composes a `netanatomy.dissect.run.DissectConfig`) and its
  cached studies: per seed the dense baseline (a zoo entry on the concept world) and the DKA model
  from the same initialisation and data order (`train_pairs`), both trunks dissected and their
  explanations measured (`seed_table`), the paired verdicts on the paper's claims (`verdicts`),
  the main seed's dissection, concentration and K sweep.
- `figures`: plots, the explanation pages like upstream ``explain.html``, the dissection reports and
  the `describe_*` sentences of the findings.
"""

from . import figures, method, run

__all__ = ["figures", "method", "run"]
