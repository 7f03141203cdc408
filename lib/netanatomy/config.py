"""One convention for a method's configuration: a dataclass built from a notebook's parameters.

Every method's config subclasses `RunConfig` (the fields every run has: scale, seed, device,
progress) and declares each field with `param(default, check)`. `from_params(P)` rejects names the
config does not know, and construction checks every field's type and range before any work, so a
bad value stops with one line naming the parameter and what was expected. Configs compose: a field
may hold another config (DKA's holds a `DissectConfig`).

The checks below are small functions ``check(name, value) -> value`` (the value normalised, e.g. a
tuple to a list) that raise `ParamError`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .errors import ParamError

Check = Callable[[str, Any], Any]

#: Built-in data scales (see `netanatomy.subject.SCALES`).
SCALE_NAMES = ("default", "smoke")


def param(default: Any = None, check: Check | None = None, doc: str = "") -> Any:
    """A config field with a default, a check run at construction, and a one-line description."""
    meta = {"check": check, "doc": doc}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- checks
def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(float(value))


def _range_text(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return "finite"


def _in_range(v: float, lo, hi, lo_open: bool, hi_open: bool) -> bool:
    return (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi))


def optional(check: Check) -> Check:
    """None, or a value that passes `check`."""
    def run(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)
    run.optional = True
    return run


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    """An integer in [lo, hi] (either bound may be None)."""
    def run(name: str, value: Any) -> int:
        if not _is_int(value) or not _in_range(value, lo, hi, False, False):
            raise ParamError(name, f"must be an integer {_range_text(lo, hi, False, False)}, got {value!r}")
        return int(value)
    return run


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Check:
    """A finite real number in the given interval (open or closed at each end)."""
    def run(name: str, value: Any) -> float:
        if not _is_number(value) or not _in_range(float(value), lo, hi, lo_open, hi_open):
            raise ParamError(name, f"must be a number {_range_text(lo, hi, lo_open, hi_open)}, got {value!r}")
        return float(value) if isinstance(value, (float, np.floating)) else value
    return run


def boolean() -> Check:
    """True or False."""
    def run(name: str, value: Any) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise ParamError(name, f"must be True or False, got {value!r}")
        return bool(value)
    return run


def choice(*options: Any) -> Check:
    """One of `options`."""
    def run(name: str, value: Any) -> Any:
        if isinstance(value, (list, dict)) or value not in options:
            raise ParamError(name, f"must be one of {', '.join(repr(o) for o in options)}, got {value!r}")
        return value
    return run


def text() -> Check:
    """A non-empty string."""
    def run(name: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise ParamError(name, f"must be a non-empty string, got {value!r}")
        return value
    return run


def items(check: Check, min_len: int = 1, unique: bool = False) -> Check:
    """A list (a tuple is taken too) of at least `min_len` values, each passing `check`."""
    def run(name: str, value: Any) -> list:
        if not isinstance(value, (list, tuple)) or len(value) < min_len:
            raise ParamError(name, f"must be a list of at least {min_len} value(s), got {value!r}")
        out = [check(name, v) for v in value]
        if unique and len(set(map(repr, out))) != len(out):
            raise ParamError(name, f"has duplicates: {value!r}")
        return out
    return run


def mapping(key: Check, value: Check) -> Check:
    """A dict whose keys and values pass their checks."""
    def run(name: str, given: Any) -> dict:
        if not isinstance(given, Mapping):
            raise ParamError(name, f"must be a mapping, got {given!r}")
        return {key(name, k): value(name, v) for k, v in given.items()}
    return run


def either(*checks: Check, expected: str) -> Check:
    """A value that passes one of `checks` (the first that does); `expected` describes them all."""
    def run(name: str, value: Any) -> Any:
        for check in checks:
            try:
                return check(name, value)
            except ParamError:
                continue
        raise ParamError(name, f"must be {expected}, got {value!r}")
    return run


# ----------------------------------------------------------------------------- the base config
def check_fields(obj: Any) -> None:
    """Run the check of every `param` field of a dataclass instance, storing the normalised values
    (what `RunConfig` does on construction; a method's own settings dataclass may call it too)."""
    for f in dataclasses.fields(obj):
        check = f.metadata.get("check")
        if check is not None:
            setattr(obj, f.name, check(f.name, getattr(obj, f.name)))


@dataclasses.dataclass
class RunConfig:
    """Fields every run has. Subclasses add their own `param(...)` fields and may override `validate`
    for checks across fields (called after every field passed its own check)."""

    scale: str = param("default", choice(*SCALE_NAMES), "built-in data scale")
    seed: int = param(0, integer(0), "seeds every random draw")
    device: str = param("auto", text(), "'auto', 'cpu' or 'cuda'")
    progress: bool = param(True, boolean(), "show progress bars")

    def __post_init__(self) -> None:
        check_fields(self)
        self.validate()

    def validate(self) -> None:
        """Checks across fields (none here)."""

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.init]

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any):
        """The config of a notebook's collected parameters; an unknown name stops with ParamError."""
        given = {**params, **overrides}
        known = set(cls.names())
        unknown = [n for n in given if n not in known]
        if unknown:
            raise ParamError(unknown[0], f"is not a parameter of {cls.__name__}; known: {', '.join(sorted(known))}")
        return cls(**given)

    def key(self, exclude: Iterable[str] = ()) -> dict:
        """The fields that decide a result (for cache keys): all but device, progress and `exclude`."""
        skip = {"device", "progress", *exclude}
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in skip}

    def replace(self, **changes: Any):
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)


def _plain(value: Any) -> Any:
    if isinstance(value, RunConfig) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
