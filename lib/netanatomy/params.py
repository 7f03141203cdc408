"""Notebook parameters: reject unknown names injected by papermill, show user errors as one line."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Mapping

import papermill
from IPython import get_ipython

from .errors import NetanatomyError, ParamError
from .runtime import repo_root


def notebook_path(notebook: str) -> Path:
    """Path of notebooks/<notebook>.ipynb in this checkout."""
    return repo_root() / "notebooks" / f"{Path(notebook).stem}.ipynb"


def declared(notebook: str | Path) -> dict[str, dict]:
    """The parameters a notebook declares in its `parameters` cell (papermill.inspect_notebook)."""
    path = Path(notebook) if str(notebook).endswith(".ipynb") else notebook_path(str(notebook))
    return dict(papermill.inspect_notebook(str(path)))


def with_defaults(notebook: str | Path, given: Mapping[str, Any]) -> dict[str, Any]:
    """`given` (names checked) over the notebook's own parameter defaults: a notebook's run without the notebook."""
    check_names(notebook, given)
    defaults = {name: ast.literal_eval(spec["default"]) for name, spec in declared(notebook).items()}
    return {**defaults, **given}


def check_names(notebook: str | Path, given: Mapping[str, Any] | list[str]) -> None:
    """Raise ParamError for names not declared by the notebook (papermill itself only warns)."""
    known = declared(notebook)
    unknown = [name for name in given if name not in known]
    if unknown:
        raise ParamError(unknown[0], f"is not a parameter of {Path(str(notebook)).stem}; "
                                     f"known parameters: {', '.join(sorted(known))}")


def _injected_names(history: list[str]) -> list[str]:
    """Names assigned in papermill's injected-parameters cells (they start with '# Parameters')."""
    names: list[str] = []
    for source in history:
        if source.lstrip().startswith("# Parameters"):
            for node in ast.parse(source).body:
                if isinstance(node, ast.Assign):
                    names += [t.id for t in node.targets if isinstance(t, ast.Name)]
    return names


def collect(notebook: str, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """Checked parameters of a running notebook as a dict (call right after the parameters cell).

    Rejects names papermill injected that the notebook does not declare, and makes errors of this
    package show as one line instead of a traceback.
    """
    show_errors_as_messages()
    known = declared(notebook)
    check_names(notebook, _injected_names(list(namespace.get("In", []))))
    return {name: namespace[name] for name in known if name in namespace}


def show_errors_as_messages() -> None:
    """In IPython, display NetanatomyError (bad parameter, missing data) as one clear line."""
    shell = get_ipython()
    if shell is None:
        return

    def handler(self, etype, value, tb, tb_offset=None):
        self._showtraceback(etype, value, [f"{etype.__name__}: {value}"])

    shell.set_custom_exc((NetanatomyError,), handler)
