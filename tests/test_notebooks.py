"""Every notebook: committed clean, parameter files valid, and a headless run on its smoke set."""

import json
from pathlib import Path

import pytest
import yaml

from netanatomy import params, reproduce

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = [n for n in reproduce.NOTEBOOKS if (ROOT / "notebooks" / f"{n}.ipynb").exists()]


def test_every_runner_notebook_exists():
    assert NOTEBOOKS == list(reproduce.NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_clean_with_parameters_cell(name):
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert (ROOT / "params" / f"{name}.yaml").exists() and (ROOT / "params" / f"{name}.smoke.yaml").exists()


@pytest.mark.parametrize("param_file", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_parameter_files_use_declared_names(param_file):
    notebook = reproduce.notebook_of(param_file)
    assert notebook in NOTEBOOKS, f"{param_file.name}: no notebook {notebook!r}"
    params.check_names(ROOT / "notebooks" / f"{notebook}.ipynb", yaml.safe_load(param_file.read_text()) or {})


@pytest.mark.notebook
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_headless_on_smoke_set(name, tmp_path):
    outcome = reproduce.run_one(name, reproduce.params_file(name, "smoke", ROOT / "params"), tmp_path, ROOT / "notebooks")
    assert outcome.status == "ok", f"{name} failed in cell {outcome.failing_cell}: {outcome.error}"
    assert (tmp_path / f"{name}.html").stat().st_size > 10_000
