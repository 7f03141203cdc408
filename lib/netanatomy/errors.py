"""User-facing errors: each names the parameter or path at fault and what was expected.

A DataLoader worker re-raises an exception by calling its class with one argument, the worker's
traceback text; these classes accept that form and keep only their own one-line message from it,
so an unreadable image in a worker still shows as one line naming the file.
"""

from __future__ import annotations


def _own_line(text: str) -> str:
    """Our one-line message inside a re-raised worker traceback (its last line), else the text."""
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    head, _, rest = last.partition(": ")
    return rest if head.rsplit(".", 1)[-1] in ("DataError", "ParamError", "NetanatomyError") else last


class NetanatomyError(Exception):
    """Base class of every error meant for the user (shown in notebooks as one line)."""

    def __init__(self, text: str = ""):
        super().__init__(_own_line(str(text)))


class ParamError(NetanatomyError, ValueError):
    """A parameter has a bad value."""

    def __init__(self, param: str, message: str | None = None):
        self.param = param if message is not None else None
        super().__init__(f"parameter '{param}': {message}" if message is not None else param)


class DataError(NetanatomyError, FileNotFoundError):
    """A data file or folder is missing or malformed."""

    def __init__(self, path, message: str | None = None, expected: str | None = None):
        self.path = str(path) if message is not None else None
        text = f"{path}: {message}" if message is not None else str(path)
        if expected:
            text += f" (expected: {expected})"
        super().__init__(text)


def require(condition: bool, param: str, message: str) -> None:
    """Raise ParamError(param, message) unless condition holds."""
    if not condition:
        raise ParamError(param, message)
