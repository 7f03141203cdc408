"""User-facing errors: each names the parameter or path at fault and what was expected."""

from __future__ import annotations


class NetanatomyError(Exception):
    """Base class of every error meant for the user (shown in notebooks as one line)."""


class ParamError(NetanatomyError, ValueError):
    """A parameter has a bad value."""

    def __init__(self, param: str, message: str):
        self.param = param
        super().__init__(f"parameter '{param}': {message}")


class DataError(NetanatomyError, FileNotFoundError):
    """A data file or folder is missing or malformed."""

    def __init__(self, path, message: str, expected: str | None = None):
        self.path = str(path)
        text = f"{path}: {message}"
        if expected:
            text += f" (expected: {expected})"
        super().__init__(text)


def require(condition: bool, param: str, message: str) -> None:
    """Raise ParamError(param, message) unless condition holds."""
    if not condition:
        raise ParamError(param, message)
