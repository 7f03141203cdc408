"""Where a cold default run spends its time: every run's phases, cold, on this machine.

    .venv/bin/python benchmarks/profile_notebooks.py                      # concept_world, dka, heterogeneity
    .venv/bin/python benchmarks/profile_notebooks.py --only nad_hitrate   # any runs of params/runs.yaml
    .venv/bin/python benchmarks/profile_notebooks.py --cache .cache       # warm: reuse a cache

Runs the notebooks with `netanatomy.reproduce` into a temporary reports folder and a fresh cache
(unless --cache is given; concept_world runs first when asked for, since the others use its
models), then prints, per run, its wall time, the cached phases it computed (data generation,
training, search, dissection passes: `reports/<run>/profile.json`, written by `cache.cached`) and
the notebook cells that took longest (evaluation, tables and plotting; papermill's per-cell
durations). Run it on an idle machine: the numbers are seconds of wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import nbformat

from netanatomy import reproduce

DEFAULT = ["concept_world", "dka", "heterogeneity"]


def cell_times(executed: Path, top: int) -> list[tuple[float, str]]:
    """The `top` slowest code cells of an executed notebook: (seconds, first line of the cell)."""
    nb = nbformat.read(executed, as_version=4)
    cells = [(float(c.metadata.get("papermill", {}).get("duration") or 0.0), c.source.strip().splitlines()[0][:70])
             for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    return sorted(cells, reverse=True)[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", default=DEFAULT, help="runs to profile (default: %(default)s)")
    ap.add_argument("--cache", help="cache folder to use (default: a fresh temporary one, i.e. a cold run)")
    ap.add_argument("--top", type=int, default=4, help="slowest cells shown per run")
    ap.add_argument("--set", default="default", dest="set_name", help="parameter set (default: %(default)s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NETANATOMY_CACHE"] = args.cache or str(Path(tmp) / "cache")
        out = Path(tmp) / "reports"
        outcomes = reproduce.run(args.only, args.set_name, out)
        for o in outcomes:
            print(f"\n{o.run}: {o.status}, {o.seconds:.1f} s")
            phases = json.loads((out / o.run / "profile.json").read_text())["phases"] \
                if (out / o.run / "profile.json").exists() else []
            for p in sorted(phases, key=lambda p: -p["seconds"]):
                print(f"  phase {p['seconds']:7.1f} s  {p['how']:8s}  {p['phase']}")
            if (out / f"{o.run}.ipynb").exists():
                for seconds, line in cell_times(out / f"{o.run}.ipynb", args.top):
                    print(f"  cell  {seconds:7.1f} s  {line}")
        print(f"\ntotal {sum(o.seconds for o in outcomes):.1f} s for {len(outcomes)} runs")


if __name__ == "__main__":
    main()
