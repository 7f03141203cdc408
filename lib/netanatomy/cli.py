"""`python -m netanatomy run <notebook> -f params/<file>.yaml [-p name value ...]`: a notebook's heavy
step without the notebook.

Reads the parameter file, applies the `-p` overrides (values are Python literals as in the
notebook's parameters cell; anything else is taken as a string), fills in the notebook's own
parameter defaults (`params.with_defaults`) and runs the step registered for the notebook in
`STEPS`. The step writes the same cached results the notebook would, so the notebook run
afterwards with the same parameters only reads them. Launch it under torchrun to share the work
out (`netanatomy.distributed`; gloo on CPU, NCCL on CUDA):

    torchrun --nproc_per_node 4 -m netanatomy run nad_findpath -f params/nad_findpath.imagenet_vgg16.yaml
    torchrun --nproc_per_node 4 -m netanatomy run dissection -f params/dissection.broden224_resnet18.yaml
    torchrun --nproc_per_node 4 -m netanatomy run heterogeneity -f params/heterogeneity.imagenet_resnet50.yaml

NAD searches share the classes out across the ranks, dissection shares the images, DKA deals its
paired runs out (one whole run per rank; with fewer runs than ranks each run trains with DDP),
heterogeneity trains with DDP. Rank 0 writes each result once and prints the step's summary table.

An unknown notebook, an unknown parameter or a bad value stops with one line (exit status 2).
This is an entry point on top of the paper packages (like `reproduce`), not a core module.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from . import dissect, distributed, dka, hetero, nad
from .errors import DataError, NetanatomyError, ParamError
from .params import with_defaults


def show(table) -> None:
    """Print a step's summary table, once (rank 0)."""
    if distributed.world()[0] == 0:
        print(table.to_string())


def nad_findpath(P: dict) -> None:
    """The search on every class and the beta sweep's searches."""
    cfg = nad.run.FindPathConfig.from_params(P)
    subject = nad.run.subject_for(cfg, cfg.model)
    paths = nad.run.find_paths(subject, cfg)
    nad.run.sweep_betas(subject, cfg, cfg.sweep_betas, cfg.sweep_classes, reuse=paths)
    show(nad.run.path_summary(paths))


def nad_hitrate(P: dict) -> None:
    """The searches of every compared model and search seed."""
    subjects, results = nad.run.subjects_and_paths(nad.run.HitRateConfig.from_params(P))
    show(nad.run.models_overview(subjects, results))


def nad_subarch(P: dict) -> None:
    """The searches of every search seed."""
    cfg = nad.run.SubArchConfig.from_params(P)
    show(nad.run.path_summary(nad.run.seeded_paths(nad.run.subject_for(cfg, cfg.model), cfg)[0]))


def dissection(P: dict) -> None:
    """Both passes over the Broden images for every dissected layer."""
    cfg = dissect.run.Config.from_params(P)
    show(dissect.tables.summary_table(dissect.run.study(cfg).results, cfg.iou_threshold, cfg.counting))


def dka_pairs(P: dict) -> None:
    """Both arms of every seed trained, and each dissected."""
    cfg = dka.run.Config.from_params(P)
    pairs = dka.run.train_pairs(cfg)
    show(dka.run.seed_table(cfg, pairs, dka.run.broden_folder(cfg, pairs[0].data)))


#: notebook name -> its heavy step, called with the notebook's parameters (all of them, defaults filled in)
STEPS: dict[str, Callable[[dict], None]] = {
    "nad_findpath": nad_findpath,
    "nad_hitrate": nad_hitrate,
    "nad_subarch": nad_subarch,
    "dissection": dissection,
    "dka": dka_pairs,
    "heterogeneity": hetero.run.step,
}


def literal(text: str) -> Any:
    """A `-p` value: a Python literal (3, 0.5, None, True, ['magnitude']) or else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def read_params(path: str | Path) -> dict:
    """The parameters of a YAML file (a mapping of names to values; an empty file gives none)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "parameter file not found", expected="a params/<notebook>*.yaml file")
    try:
        given = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DataError(path, f"is not valid YAML ({str(exc).splitlines()[0]})", expected="name: value lines") from exc
    if not isinstance(given, dict):
        raise DataError(path, "does not hold a mapping of parameter names to values", expected="name: value lines")
    return given


def run(notebook: str, params_file: str | Path | None = None, overrides: Sequence[tuple[str, str]] = ()) -> None:
    """Run `notebook`'s registered step with the file's parameters and the overrides over its defaults."""
    if notebook not in STEPS:
        raise ParamError("notebook", f"no heavy step is registered for {notebook!r}; registered: {', '.join(STEPS)}")
    given = read_params(params_file) if params_file is not None else {}
    given.update({name: literal(value) for name, value in overrides})
    STEPS[notebook](with_defaults(notebook, given))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netanatomy", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    step = commands.add_parser("run", help="run a notebook's heavy step (training, search) into the cache")
    step.add_argument("notebook", help=f"notebook name ({', '.join(STEPS)})")
    step.add_argument("-f", "--parameters-file", dest="params_file", help="a params/<notebook>*.yaml file")
    step.add_argument("-p", "--parameter", dest="overrides", nargs=2, action="append", default=[],
                      metavar=("NAME", "VALUE"), help="set one parameter (a Python literal, else a string)")
    args = parser.parse_args(argv)
    try:
        run(args.notebook, args.params_file, args.overrides)
    except NetanatomyError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0
