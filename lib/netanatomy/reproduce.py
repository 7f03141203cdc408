"""Run every notebook with its parameter set (papermill), export HTML (nbconvert), write reports/index.html.

    python -m netanatomy.reproduce                 # all notebooks, params/<nb>.yaml, into reports/
    python -m netanatomy.reproduce --only dka      # one (or several) notebooks
    python -m netanatomy.reproduce --set smoke     # params/<nb>.smoke.yaml (the tests' smallest sets)

A failing notebook is reported with its name and failing cell; the others still run; the exit code
is non-zero when any failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import os
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
from .runtime import atomic_write_text, repo_root

NOTEBOOKS = ("concept_world", "nad_findpath", "nad_hitrate", "nad_subarch", "dissection", "dka",
             "heterogeneity", "decomposition")


@dataclasses.dataclass
class Outcome:
    """How one notebook run ended."""

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


def run_one(notebook: str, pfile: Path, out: Path, notebooks_dir: Path) -> Outcome:
    """Execute one notebook with papermill into out/<nb>.ipynb and export out/<nb>.html."""
    source = notebooks_dir / f"{notebook}.ipynb"
    executed = out / f"{notebook}.ipynb"
    clear(out / notebook)  # the index must never show an earlier run's findings
    for stale in (executed, executed.with_suffix(".html")):
        stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    parameters: dict = {}
    try:
        if not source.exists():
            raise NetanatomyError(f"{source}: notebook not found")
        if pfile.exists():
            parameters = yaml.safe_load(pfile.read_text()) or {}
        elif pfile.name != f"{notebook}.yaml":
            raise NetanatomyError(f"{pfile}: parameter file not found")
        check_names(source, parameters)
        papermill.execute_notebook(str(source), str(executed), parameters=parameters, cwd=str(notebooks_dir),
                                   progress_bar=False, kernel_name="python3")
        outcome = Outcome(notebook, str(pfile), parameters, "ok", time.perf_counter() - t0)
    except PapermillExecutionError as exc:
        outcome = Outcome(notebook, str(pfile), parameters, "failed", time.perf_counter() - t0,
                          f"{exc.ename}: {exc.evalue}", exc.exec_count)
    except (NetanatomyError, ParamError, yaml.YAMLError, OSError) as exc:
        outcome = Outcome(notebook, str(pfile), parameters, "failed", time.perf_counter() - t0, str(exc))
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


def write_index(outcomes: list[Outcome], out: Path) -> Path:
    """reports/index.html: one row per notebook with status, time, parameters, findings and links."""
    rows = []
    for o in outcomes:
        findings_file = out / o.notebook / "findings.json"
        findings = json.loads(findings_file.read_text())["findings"] if findings_file.exists() else []
        links = " ".join(f"<a href='{html.escape(p)}'>{label}</a>" for p, label in (
            (f"{o.notebook}.html", "report"), (f"{o.notebook}.ipynb", "notebook"), (f"{o.notebook}/", "files"))
            if (out / p).exists())
        status = f"<span class='{'ok' if o.status == 'ok' else 'fail'}'>{o.status}</span>"
        if o.error:
            cell = f" in cell {o.failing_cell}" if o.failing_cell is not None else ""
            status += f"<br><small>{html.escape(o.error[:400])}{cell}</small>"
        params = "<br>".join(f"<code>{html.escape(k)}={html.escape(repr(v))}</code>" for k, v in o.parameters.items())
        notes = "".join(f"<li>{inline_markdown(f)}</li>" for f in findings)
        rows.append(f"<tr><td><b>{o.notebook}</b><br>{links}</td><td>{status}</td><td>{o.seconds:.0f} s</td>"
                    f"<td><small>{html.escape(Path(o.params_file).name)}</small><br>{params}</td>"
                    f"<td><ul>{notes}</ul></td></tr>")
    body = ("<p>Generated by <code>python -m netanatomy.reproduce</code>. Each report links its executed "
            "notebook and its tables and figures.</p><table class='tbl'><tr><th>notebook</th><th>status</th>"
            "<th>time</th><th>parameters</th><th>findings</th></tr>" + "".join(rows) + "</table>")
    return atomic_write_text(out / "index.html", html_page("netanatomy reports", body))


def run(only: list[str] | None = None, set_name: str = "default", out: str | Path = "reports",
        notebooks_dir: Path | None = None, params_dir: Path | None = None) -> list[Outcome]:
    """Run the selected notebooks in order, writing reports and index.html into `out`."""
    root = repo_root()
    notebooks_dir = Path(notebooks_dir or root / "notebooks")
    params_dir = Path(params_dir or root / "params")
    names = list(only) if only else [n for n in NOTEBOOKS if (notebooks_dir / f"{n}.ipynb").exists()
                                     and (set_name in ("default", "smoke") or params_file(n, set_name, params_dir).exists())]
    if not names:
        raise ParamError("set", f"no notebook has a parameter set {set_name!r} (looked for params/<notebook>."
                                f"{set_name}.yaml and params/{set_name}.yaml)")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["NETANATOMY_REPORTS"] = str(out)
    outcomes = []
    for name in names:
        print(f"[reproduce] {name} ...", flush=True)
        outcome = run_one(name, params_file(name, set_name, params_dir), out, notebooks_dir)
        where = f" (cell {outcome.failing_cell})" if outcome.failing_cell is not None else ""
        print(f"[reproduce] {name}: {outcome.status} in {outcome.seconds:.0f} s{where} {outcome.error}", flush=True)
        outcomes.append(outcome)
        write_index(outcomes, out)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netanatomy.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NOTEBOOK", help=f"notebooks to run (default: all of {', '.join(NOTEBOOKS)})")
    parser.add_argument("--set", default="default", dest="set_name", help="parameter set: default, smoke, or the suffix of params/<nb>.<set>.yaml")
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
