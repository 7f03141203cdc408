import nbformat
import pytest
import yaml

from netanatomy import reproduce


def _write(path, cells):
    code = [nbformat.v4.new_code_cell(c) for c in cells]
    code[0].metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=code)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def dirs(tmp_path):
    """(notebooks, params, out) folders of a throw-away project."""
    nbs, prm = tmp_path / "notebooks", tmp_path / "params"
    nbs.mkdir(), prm.mkdir()
    return nbs, prm, tmp_path / "out"


def test_runner_reports_failures_and_continues(dirs):
    nbs, prm, out = dirs
    _write(nbs / "bad.ipynb", ["x = 1", "y = x + 1", "raise RuntimeError('boom at ' + str(y))"])
    _write(nbs / "good.ipynb", ["x = 1", "print(x * 21)"])
    (prm / "good.yaml").write_text(yaml.safe_dump({"x": 2}))
    (prm / "bad.yaml").write_text(yaml.safe_dump({"x": 1}))
    outcomes = reproduce.run(["bad", "good"], "default", out, nbs, prm)
    bad, good = outcomes
    assert bad.status == "failed" and bad.failing_cell == 4 and "boom at 2" in bad.error  # injected cell shifts by one
    assert good.status == "ok" and good.parameters == {"x": 2}
    assert (out / "good.html").exists() and (out / "bad.html").exists()
    index = (out / "index.html").read_text()
    assert "boom at 2" in index and "in cell 4" in index and "good.html" in index


def test_runner_rejects_unknown_parameter_before_running(dirs):
    nbs, prm, out = dirs
    _write(nbs / "nb.ipynb", ["x = 1", "print(x)"])
    (prm / "nb.smoke.yaml").write_text(yaml.safe_dump({"x": 1, "typo": 3}))
    (outcome,) = reproduce.run(["nb"], "smoke", out, nbs, prm)
    assert outcome.status == "failed" and "'typo'" in outcome.error and not (out / "nb.ipynb").exists()
    assert reproduce.main(["--only", "missing_nb", "--out", str(out)]) == 1


def test_named_parameter_set_is_found_by_its_notebook_line(tmp_path):
    prm = tmp_path / "params"
    prm.mkdir()
    (prm / "nb.yaml").write_text("x: 1\n")
    (prm / "realdata.yaml").write_text("# notebook: nb\nx: 2\n")
    (prm / "other.realdata.yaml").write_text("x: 3\n")
    assert reproduce.notebook_of(prm / "realdata.yaml") == "nb"
    assert reproduce.notebook_of(prm / "other.realdata.yaml") == "other"
    assert reproduce.params_file("nb", "default", prm) == prm / "nb.yaml"
    assert reproduce.params_file("nb", "realdata", prm) == prm / "realdata.yaml"
    assert reproduce.params_file("other", "realdata", prm) == prm / "other.realdata.yaml"
    assert reproduce.params_file("third", "realdata", prm) == prm / "third.realdata.yaml"  # not named: not taken


def test_findings_markdown_is_rendered_escaped_in_the_index():
    assert reproduce.inline_markdown("**0.87** vs `a<b`\nnext") == "<b>0.87</b> vs <code>a&lt;b</code><br>next"


def test_named_runs_write_their_own_report_folder_and_index_rows(dirs):
    nbs, prm, out = dirs
    _write(nbs / "nb.ipynb", ["x = 1", "import os, pathlib\n"
                              "d = pathlib.Path(os.environ['NETANATOMY_REPORTS']) / os.environ['NETANATOMY_RUN']\n"
                              "d.mkdir(parents=True, exist_ok=True); (d / 'x.txt').write_text(str(x))"])
    (prm / "nb.yaml").write_text("x: 1\n")
    (prm / "nb.big.yaml").write_text("x: 5\n")
    (prm / "runs.yaml").write_text("default: [nb, nb.big]\nreal: [nb.big]\n")
    outcomes = reproduce.run(None, "default", out, nbs, prm)
    assert [o.run for o in outcomes] == ["nb", "nb.big"] and all(o.status == "ok" for o in outcomes)
    assert (out / "nb" / "x.txt").read_text() == "1" and (out / "nb.big" / "x.txt").read_text() == "5"
    assert "nb.big.html" in (out / "index.html").read_text()
    assert [o.run for o in reproduce.run(None, "real", out, nbs, prm)] == ["nb.big"]


def test_a_failed_run_never_shows_an_earlier_runs_findings(dirs):
    nbs, prm, out = dirs
    _write(nbs / "nb.ipynb", ["fail = False", "import pandas as pd\nfrom netanatomy.report import Reporter\n"
                              "rep = Reporter('nb')\nassert not fail, 'this run fails'\n"
                              "rep.table(pd.DataFrame({'a': [1]}), 'good_table')\nrep.say('finding of a good run')"])
    (prm / "nb.yaml").write_text("fail: false\n")
    reproduce.run(["nb"], "default", out, nbs, prm)
    assert (out / "nb" / "good_table.csv").exists() and "finding of a good run" in (out / "index.html").read_text()
    (prm / "nb.yaml").write_text("fail: true\n")
    (bad,) = reproduce.run(["nb"], "default", out, nbs, prm)
    assert bad.status == "failed" and "this run fails" in bad.error
    assert not (out / "nb" / "good_table.csv").exists() and (out / "nb" / "provenance.json").exists()
    assert "finding of a good run" not in (out / "index.html").read_text()
    # a run that fails before it writes anything leaves nothing of the earlier run either
    reproduce.run(["nb"], "default", out, nbs, prm.parent / "none")  # no parameter file: the notebook's defaults
    _write(nbs / "nb.ipynb", ["fail = False", "raise RuntimeError('before any report')"])
    reproduce.run(["nb"], "default", out, nbs, prm)
    assert not (out / "nb").exists()


def test_unknown_set_stops_with_one_line(tmp_path, capsys):
    assert reproduce.main(["--set", "nosuchset", "--out", str(tmp_path)]) == 2
    assert "no run in parameter set 'nosuchset'" in capsys.readouterr().err
