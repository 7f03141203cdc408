import nbformat
import papermill
import pytest
from papermill.exceptions import PapermillExecutionError

from netanatomy import params
from netanatomy.errors import ParamError


def _notebook(path):
    cells = [nbformat.v4.new_code_cell("a = 1\nb = 'x'"),
             nbformat.v4.new_code_cell(f"import netanatomy as na\nP = na.params.collect({str(path)!r}, globals())\nprint(P)"),
             nbformat.v4.new_code_cell("from netanatomy.errors import require\nrequire(a > 0, 'a', 'must be positive')")]
    cells[0].metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_injected_names_are_parsed():
    assert params._injected_names(["a = 1", "# Parameters\na = 2\nzzz = [1]\n"]) == ["a", "zzz"]


def test_check_names(tmp_path):
    nb = _notebook(tmp_path / "t.ipynb")
    params.check_names(nb, {"a": 2})
    with pytest.raises(ParamError, match="'c'.*known parameters: a, b"):
        params.check_names(nb, {"a": 2, "c": 3})


def test_notebook_rejects_unknown_parameter_and_shows_one_line(tmp_path):
    nb = _notebook(tmp_path / "t.ipynb")
    out = papermill.execute_notebook(str(nb), str(tmp_path / "ok.ipynb"), parameters={"a": 5}, progress_bar=False)
    printed = [o["text"] for c in out.cells if c.cell_type == "code" for o in c.outputs if "text" in o]
    assert printed == ["{'a': 5, 'b': 'x'}\n"]
    with pytest.raises(PapermillExecutionError) as err:
        papermill.execute_notebook(str(nb), str(tmp_path / "bad.ipynb"), parameters={"bogus": 1}, progress_bar=False)
    assert err.value.ename == "ParamError" and "bogus" in err.value.evalue
    with pytest.raises(PapermillExecutionError) as err:
        papermill.execute_notebook(str(nb), str(tmp_path / "neg.ipynb"), parameters={"a": -1}, progress_bar=False)
    code = [c for c in nbformat.read(tmp_path / "neg.ipynb", as_version=4).cells if c.cell_type == "code"]
    failed = code[-1].outputs[-1]
    assert failed["traceback"] == ["ParamError: parameter 'a': must be positive"]
