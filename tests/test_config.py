"""The config convention: fields checked at construction, unknown names refused, keys for caches."""

import dataclasses

import pytest

from netanatomy import config
from netanatomy.config import RunConfig, param
from netanatomy.errors import ParamError


@dataclasses.dataclass
class Example(RunConfig):
    k: int = param(5, config.integer(1), "features per class")
    rate: float = param(0.1, config.number(0, 1, lo_open=True), "a rate")
    mode: str = param("a", config.choice("a", "b"))
    grid: list = param([1, 2], config.items(config.integer(1)))
    cap: int | None = param(None, config.optional(config.integer(1)))

    def validate(self):
        if self.mode == "b" and self.k > 3:
            raise ParamError("k", "must be <= 3 in mode 'b'")


def test_defaults_pass_and_mutable_defaults_are_not_shared():
    a, b = Example(), Example()
    a.grid.append(3)
    assert b.grid == [1, 2]


@pytest.mark.parametrize("name, value, message", [
    ("k", 0, "parameter 'k': must be an integer >= 1, got 0"),
    ("k", 2.5, "must be an integer"),
    ("k", True, "must be an integer"),
    ("rate", 0, r"must be a number in \(0, 1\]"),
    ("rate", "x", "must be a number"),
    ("rate", float("nan"), "must be a number"),
    ("mode", "c", "must be one of 'a', 'b'"),
    ("grid", [], "at least 1"),
    ("grid", [1, 0], "integer >= 1"),
    ("cap", 0, "integer >= 1"),
    ("seed", -1, "parameter 'seed'"),
    ("scale", "huge", "parameter 'scale'"),
    ("progress", "yes", "True or False"),
])
def test_bad_values_name_the_parameter(name, value, message):
    with pytest.raises(ParamError, match=message):
        Example(**{name: value})


def test_cross_field_check_and_unknown_names():
    with pytest.raises(ParamError, match="'k': must be <= 3"):
        Example(mode="b")
    with pytest.raises(ParamError, match="'beta': is not a parameter of Example"):
        Example.from_params({"k": 2, "beta": 1})
    assert Example.from_params({"k": 2}, seed=3).seed == 3


def test_key_leaves_out_device_and_progress():
    key = Example(device="cpu", progress=False).key()
    assert "device" not in key and "progress" not in key and key["k"] == 5
