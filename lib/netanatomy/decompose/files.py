"""The decomposition notebook's files: index sets in upstream's JSON layout, CSG checkpoints in
upstream's layout, and the up-front check that every path a parameter names exists.

Index files are JSON ``{"0": [i1, ...], "1": [...], ...}`` (akshaybadola/decomposing-the-deep's
`resnet20_cifar-10_indices.json` layout); a CSG checkpoint is a dict with `model_state_dict` holding
the C x D `csg` gate matrix beside the network's weights (upstream's `best_save_CSG.pth`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch

from .. import models
from ..errors import DataError
from ..runtime import atomic_write_text, resolve_path
from .csg import CSGNet
from .method import Indices, check_indices

INDEX_LAYOUT = 'a JSON file {"0": [i1, ...], "1": [...], ...}'


def existing(param: str, value: str | Path | None, expected: str) -> Path | None:
    """The resolved path a parameter names (None stays None); DataError naming the parameter when absent."""
    if value is None:
        return None
    path = resolve_path(value)
    if not path.exists():
        raise DataError(path, f"not found (parameter '{param}')", expected)
    return path


def read_indices(path: str | Path, num_classes: int | None = None, num_features: int | None = None) -> Indices:
    """Read an index file in the upstream JSON layout {"0": [i1, ...], ...} (checked against the model)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "index file not found", INDEX_LAYOUT)
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"is not valid JSON ({exc})", INDEX_LAYOUT) from exc
    return check_indices(obj, num_classes, num_features, where=str(path))


def write_indices(indices: Mapping, path: str | Path) -> Path:
    """Write index sets in the upstream JSON layout {"0": [i1, ...], ...} (atomically)."""
    clean = check_indices(indices, equal_sizes=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps({str(c): v for c, v in clean.items()}))


def load_csg_checkpoint(path: str | Path, model_name: str = "resnet20") -> CSGNet:
    """A CSG checkpoint (upstream layout: `model_state_dict` with the C x D `csg` gate matrix) as a CSGNet.

    The upstream file holds numpy scalars, so it is read with pickle allowed: use trusted copies only.
    """
    obj = models.read_checkpoint(path, trusted=True)
    state = obj.get("model_state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping):
        raise DataError(path, "holds no state dict", "a dict with model_state_dict (incl. the csg gate matrix)")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    gate_keys = [k for k in state if k == "csg" or k.endswith(".csg")]
    if not gate_keys:
        raise DataError(path, "has no CSG gate matrix ('csg' key)", "model_state_dict['csg'] of shape (C, D)")
    gates = state.pop(gate_keys[0])
    linear = state.get("linear.weight", state.get("fc.weight"))
    if linear is None:
        raise DataError(path, "has no final linear layer (linear.weight / fc.weight)")
    model = models.build(model_name, int(linear.shape[0]))
    models.load_weights(model, state, where=str(path))
    return CSGNet(model, torch.as_tensor(gates).float()).eval()
