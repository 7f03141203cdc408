"""netanatomy: reproductions of five papers on the inner anatomy of convolutional networks.

Submodules load on first use, so `import netanatomy as na; na.nad` works without importing all.
"""

import importlib

__version__ = "0.1.0"

_MODULES = ("errors", "runtime", "config", "cache", "world", "data", "broden", "models", "hooks", "stats", "train",
            "zoo", "subject", "streaming", "params", "plots", "report", "reproduce", "cli", "nad", "decompose", "dissect",
            "dka", "hetero")


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'netanatomy' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_MODULES))
