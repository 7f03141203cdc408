"""netanatomy: reproductions of five papers on the inner anatomy of convolutional networks.

Submodules load on first use, so `import netanatomy as na; na.nad` works without importing all.
"""

import importlib

__version__ = "0.1.0"

_MODULES = ("errors", "runtime", "world", "data", "models", "hooks", "stats", "train", "zoo", "params",
            "plots", "report", "reproduce", "nad", "decompose", "broden", "dissect", "dka", "hetero")


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'netanatomy' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_MODULES))
