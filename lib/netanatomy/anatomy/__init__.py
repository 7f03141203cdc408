"""One model, five lenses: the class unit-sets of NAD, Decomposing the Deep and DKA compared on one
network, with Network Dissection's labels and the concept world's planted truth, and the heterogeneity
hypothesis's class-agnostic lens (LW-DNA widths against the baseline's detectors per layer) (`method`:
the comparison's math; `run`: config, cached inputs, tables; `figures`: plots and prose)."""

from . import figures, method, run

__all__ = ["figures", "method", "run"]
