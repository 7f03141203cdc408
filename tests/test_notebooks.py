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


@pytest.mark.parametrize("param_file", sorted(p for p in (ROOT / "params").glob("*.yaml") if p.name != "runs.yaml"),
                         ids=lambda p: p.name)
def test_parameter_files_use_declared_names(param_file):
    notebook = reproduce.notebook_of(param_file)
    assert notebook in NOTEBOOKS, f"{param_file.name}: no notebook {notebook!r}"
    params.check_names(ROOT / "notebooks" / f"{notebook}.ipynb", yaml.safe_load(param_file.read_text()) or {})


@pytest.mark.parametrize("set_name", reproduce.MANIFEST_SETS)
def test_every_listed_run_has_its_parameter_file(set_name):
    runs = reproduce.runs_for(set_name, None, ROOT / "notebooks", ROOT / "params")
    assert runs and all(r.notebook in NOTEBOOKS and r.params_file.exists() for r in runs), runs
    assert len({r.name for r in runs}) == len(runs)


@pytest.mark.notebook
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_headless_on_smoke_set(name, tmp_path):
    outcome = reproduce.run_one(reproduce.run_of(name, "smoke", ROOT / "params"), tmp_path, ROOT / "notebooks")
    assert outcome.status == "ok", f"{name} failed in cell {outcome.failing_cell}: {outcome.error}"
    assert (tmp_path / f"{name}.html").stat().st_size > 10_000


@pytest.mark.notebook
def test_decomposition_notebook_on_shared_real_data(tmp_path, monkeypatch):
    """params/decomposition.cifar10_resnet20.yaml, on 3 training images per class (its sizes overridden): the whole
    notebook on ../shared/data, reproducing the published MI exactly."""
    pfile = ROOT / "params" / "decomposition.cifar10_resnet20.yaml"
    given = yaml.safe_load(pfile.read_text())
    shared = [v for value in given.values() for v in (value.values() if isinstance(value, dict) else [value])
              if isinstance(v, str) and "shared/" in v]
    missing = [p for p in shared if not (ROOT / p).exists()]
    if missing:
        pytest.skip(f"shared real-data files absent: {', '.join(missing)} (see ../shared/data/README.md)")
    assert reproduce.params_file("decomposition", "cifar10_resnet20", ROOT / "params") == pfile
    few = tmp_path / pfile.name
    few.write_text(yaml.safe_dump(given | {"fit_per_class": 3, "train_per_class": 1, "k_grid": [5], "n_random": 3}))
    monkeypatch.setenv("NETANATOMY_REPORTS", str(tmp_path))  # the kernel writes its tables here
    outcome = reproduce.run_one(reproduce.Run("decomposition", "decomposition", few), tmp_path, ROOT / "notebooks")
    assert outcome.status == "ok", f"failed in cell {outcome.failing_cell}: {outcome.error}"
    findings = " ".join(json.loads((tmp_path / "decomposition" / "findings.json").read_text())["findings"])
    assert "CIFAR-10 test[0:1000]" in findings and "CIFAR-10 (JPEG) train (30 images)" in findings
    assert "ours **0.034538** (upstream 0.034538) vs CSG **0.037509** (upstream 0.037509)" in findings


@pytest.mark.notebook
def test_readme_papermill_example_runs(tmp_path):
    """The README's `papermill notebooks/nad_findpath.ipynb out.ipynb -p beta 4.5`, on the smoke world."""
    import os
    import subprocess
    import sys

    papermill = Path(sys.executable).with_name("papermill")
    env = {**os.environ, "NETANATOMY_REPORTS": str(tmp_path / "reports")}
    done = subprocess.run([str(papermill), "notebooks/nad_findpath.ipynb", str(tmp_path / "out.ipynb"),
                           "-f", "params/nad_findpath.smoke.yaml", "-p", "beta", "4.5"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    findings = json.loads((tmp_path / "reports" / "nad_findpath" / "findings.json").read_text())
    assert findings["provenance"]["params"]["beta"] == 4.5
