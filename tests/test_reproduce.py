import nbformat
import yaml

from netanatomy import reproduce


def _write(path, cells):
    code = [nbformat.v4.new_code_cell(c) for c in cells]
    code[0].metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=code)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_runner_reports_failures_and_continues(tmp_path):
    nbs, prm, out = tmp_path / "notebooks", tmp_path / "params", tmp_path / "out"
    nbs.mkdir(), prm.mkdir()
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


def test_runner_rejects_unknown_parameter_before_running(tmp_path):
    nbs, prm, out = tmp_path / "notebooks", tmp_path / "params", tmp_path / "out"
    nbs.mkdir(), prm.mkdir()
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
