"""Run notebooks with their parameter sets (papermill), export HTML (nbconvert), write reports/index.html.

    python -m netanatomy.reproduce                      # the runs listed under `default` in params/runs.yaml
    python -m netanatomy.reproduce --set real           # the runs listed under `real` (make reproduce-real)
    python -m netanatomy.reproduce --only dka           # one (or several) runs: a notebook name ...
    python -m netanatomy.reproduce --only nad_hitrate.cifar10_resnet20   # ... or <notebook>.<set>
    python -m netanatomy.reproduce --set smoke          # params/<nb>.smoke.yaml (the tests' smallest sets)

A run is a notebook with one parameter file; its report folder and executed notebook are named
after it (`nad_hitrate`, `nad_hitrate.cifar10_resnet20`). A failing run is reported with its failing cell;
the others still run; the exit code is non-zero when any failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import html
import json
import re
import sys
import time
from pathlib import Path

import nbformat
import papermill
import yaml
from nbconvert import HTMLExporter
from papermill.exceptions import PapermillExecutionError

from .errors import NetanatomyError, ParamError
from .params import check_names
from .report import clear, html_page
from .runtime import atomic_write_text, environment, repo_root

#: Sets listed in params/runs.yaml: "default" (make reproduce) and "real" (make reproduce-real).
MANIFEST_SETS = ("default", "real")
NOTEBOOKS = ("concept_world", "nad_findpath", "nad_hitrate", "nad_subarch", "dissection", "dka",
             "heterogeneity", "decomposition", "anatomy")


@dataclasses.dataclass(frozen=True)
class Run:
    """One notebook run: its name (the report folder), the notebook and the parameter file."""

    name: str
    notebook: str
    params_file: Path


@dataclasses.dataclass
class Outcome:
    """How one run ended."""

    run: str
    notebook: str
    params_file: str
    parameters: dict
    status: str                # "ok" or "failed"
    seconds: float
    error: str = ""
    failing_cell: int | None = None


def notebook_of(param_file: Path) -> str:
    """The notebook a parameter file is for: a '# notebook: <nb>' first line, else its name's first part."""
    lines = Path(param_file).read_text().splitlines()
    if lines and lines[0].startswith("# notebook:"):
        return lines[0].split(":", 1)[1].strip()
    return Path(param_file).name.split(".")[0]


def params_file(notebook: str, set_name: str, params_dir: Path) -> Path:
    """params/<nb>.yaml for the default set, else params/<nb>.<set>.yaml, else params/<set>.yaml if it names <nb>."""
    if set_name == "default":
        return params_dir / f"{notebook}.yaml"
    own, named = params_dir / f"{notebook}.{set_name}.yaml", params_dir / f"{set_name}.yaml"
    return named if not own.exists() and named.exists() and notebook_of(named) == notebook else own


def run_of(entry: str, set_name: str, params_dir: Path) -> Run:
    """A run from a name: 'nb' (the notebook with parameter set `set_name`) or 'nb.set' (that set)."""
    notebook, _, own_set = entry.partition(".")
    chosen = own_set or ("default" if set_name in MANIFEST_SETS else set_name)
    name = notebook if chosen in ("default", "smoke") else f"{notebook}.{chosen}"
    return Run(name, notebook, params_file(notebook, chosen, params_dir))


def runs_for(set_name: str, only: list[str] | None, notebooks_dir: Path, params_dir: Path) -> list[Run]:
    """The runs of a set: `only` when given; for 'default' and 'real' the list in params/runs.yaml;
    otherwise every notebook that has a parameter file for the set."""
    manifest = params_dir / "runs.yaml"
    if only:
        entries = list(only)
    elif set_name in MANIFEST_SETS and manifest.exists():
        entries = (yaml.safe_load(manifest.read_text()) or {}).get(set_name) or []
    else:
        entries = [n for n in NOTEBOOKS if (notebooks_dir / f"{n}.ipynb").exists()
                   and (set_name in ("default", "smoke") or params_file(n, set_name, params_dir).exists())]
    if not entries:
        raise ParamError("set", f"no run in parameter set {set_name!r} (looked for params/runs.yaml, "
                                f"params/<notebook>.{set_name}.yaml and params/{set_name}.yaml)")
    return [run_of(e, set_name, params_dir) for e in entries]


def run_one(run: Run, out: Path, notebooks_dir: Path) -> Outcome:
    """Execute one run with papermill into out/<run>.ipynb (reports in out/<run>/) and export its HTML."""
    source = notebooks_dir / f"{run.notebook}.ipynb"
    executed = out / f"{run.name}.ipynb"
    clear(out / run.name)  # the index must never show an earlier run's findings
    for stale in (executed, executed.with_suffix(".html")):
        stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    parameters: dict = {}
    done = functools.partial(Outcome, run.name, run.notebook, str(run.params_file))
    try:
        if not source.exists():
            raise NetanatomyError(f"{source}: notebook not found")
        if run.params_file.exists():
            parameters = yaml.safe_load(run.params_file.read_text()) or {}
        elif run.params_file.name != f"{run.notebook}.yaml":
            raise NetanatomyError(f"{run.params_file}: parameter file not found")
        check_names(source, parameters)
        with environment(NETANATOMY_REPORTS=str(out), NETANATOMY_RUN=run.name):
            papermill.execute_notebook(str(source), str(executed), parameters=parameters, cwd=str(notebooks_dir),
                                       progress_bar=False, kernel_name="python3")
        outcome = done(parameters, "ok", time.perf_counter() - t0)
    except PapermillExecutionError as exc:
        outcome = done(parameters, "failed", time.perf_counter() - t0, f"{exc.ename}: {exc.evalue}", exc.exec_count)
    except (NetanatomyError, yaml.YAMLError, OSError) as exc:
        outcome = done(parameters, "failed", time.perf_counter() - t0, str(exc))
    if executed.exists():
        export_html(executed)
    return outcome


def export_html(executed: Path) -> Path:
    """nbconvert an executed notebook to HTML beside it."""
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    return atomic_write_text(executed.with_suffix(".html"), body)


def inline_markdown(text: str) -> str:
    """A finding's markdown (bold, code, line breaks) as escaped HTML."""
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out).replace("\n", "<br>")


def _read_json(path: Path, key: str) -> list:
    try:
        return json.loads(path.read_text())[key]
    except (OSError, ValueError, KeyError):
        return []


def _phases(profile: list[dict], top: int = 3) -> str:
    """The slowest computed phases of a run, as an HTML list."""
    computed = sorted((p for p in profile if p.get("how") == "computed"), key=lambda p: -p["seconds"])[:top]
    return "".join(f"<br><small>{html.escape(p['phase'])}: {p['seconds']:.0f} s</small>" for p in computed)


def write_index(outcomes: list[Outcome], out: Path) -> Path:
    """reports/index.html: one row per run with status, time (and its slowest phases), parameters,
    findings and links."""
    rows = []
    for o in outcomes:
        findings = _read_json(out / o.run / "findings.json", "findings")
        links = " ".join(f"<a href='{html.escape(p)}'>{label}</a>" for p, label in (
            (f"{o.run}.html", "report"), (f"{o.run}.ipynb", "notebook"), (f"{o.run}/", "files"))
            if (out / p).exists())
        status = f"<span class='{'ok' if o.status == 'ok' else 'fail'}'>{o.status}</span>"
        if o.error:
            cell = f" in cell {o.failing_cell}" if o.failing_cell is not None else ""
            status += f"<br><small>{html.escape(o.error[:400])}{cell}</small>"
        params = "<br>".join(f"<code>{html.escape(k)}={html.escape(repr(v))}</code>" for k, v in o.parameters.items())
        notes = "".join(f"<li>{inline_markdown(f)}</li>" for f in findings)
        phases = _phases(_read_json(out / o.run / "profile.json", "phases"))
        rows.append(f"<tr><td><b>{o.run}</b><br>{links}</td><td>{status}</td><td>{o.seconds:.0f} s{phases}</td>"
                    f"<td><small>{html.escape(Path(o.params_file).name)}</small><br>{params}</td>"
                    f"<td><ul>{notes}</ul></td></tr>")
    total = sum(o.seconds for o in outcomes)
    body = ("<p>Generated by <code>python -m netanatomy.reproduce</code>. Each report links its executed "
            f"notebook and its tables and figures. Total time of the runs: {total:.0f} s (the slowest computed "
            "phases of each run are listed under its time; a rerun reads them from the cache).</p>"
            "<table class='tbl'><tr><th>run</th><th>status</th>"
            "<th>time</th><th>parameters</th><th>findings</th></tr>" + "".join(rows) + "</table>")
    return atomic_write_text(out / "index.html", html_page("netanatomy reports", body))


def run(only: list[str] | None = None, set_name: str = "default", out: str | Path = "reports",
        notebooks_dir: Path | None = None, params_dir: Path | None = None) -> list[Outcome]:
    """Run the selected runs in order, writing reports and index.html into `out`."""
    root = repo_root()
    notebooks_dir = Path(notebooks_dir or root / "notebooks")
    params_dir = Path(params_dir or root / "params")
    runs = runs_for(set_name, only, notebooks_dir, params_dir)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for r in runs:
        print(f"[reproduce] {r.name} ...", flush=True)
        outcome = run_one(r, out, notebooks_dir)
        where = f" (cell {outcome.failing_cell})" if outcome.failing_cell is not None else ""
        print(f"[reproduce] {r.name}: {outcome.status} in {outcome.seconds:.0f} s{where} {outcome.error}", flush=True)
        outcomes.append(outcome)
        write_index(outcomes, out)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netanatomy.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="RUN", help="runs: a notebook name (with the set's parameters) "
                        f"or <notebook>.<set> (notebooks: {', '.join(NOTEBOOKS)})")
    parser.add_argument("--set", default="default", dest="set_name", help="parameter set: default or real (the lists "
                        "in params/runs.yaml), smoke, or the suffix of params/<nb>.<set>.yaml")
    parser.add_argument("--out", default=str(repo_root() / "reports"), help="output folder (default: reports/)")
    args = parser.parse_args(argv)
    try:
        outcomes = run(args.only, args.set_name, args.out)
    except NetanatomyError as exc:
        print(f"[reproduce] {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    failed = [o for o in outcomes if o.status != "ok"]
    print(f"[reproduce] {len(outcomes) - len(failed)} ok, {len(failed)} failed; index: {Path(args.out) / 'index.html'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
