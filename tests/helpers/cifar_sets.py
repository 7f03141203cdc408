"""The CIFAR-10 parameter sets' smoke runs (DKA, heterogeneity).

- `cifar_set(name, **overrides)`: params/<name>.yaml with `overrides`, or a skip naming the shared
  archive its `data_root` points at when that file is absent.
- `fresh_cache(tmp_path, monkeypatch)`: an empty cache under `tmp_path` that reuses the decoded CIFAR-10
  archive of the test cache (its `data` folder linked), so a test trains from nothing without decoding
  60,000 JPEG files again.
- `interrupt_once(monkeypatch, module)`: `module.fit` (a `train.fit` imported by a study) stops its first
  call after epoch 1, with that epoch's checkpoint saved, and raises KeyboardInterrupt (a killed run);
  later calls train normally, so a rerun must resume from the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from netanatomy.runtime import cache_dir

ROOT = Path(__file__).resolve().parents[2]


def cifar_set(name: str, **overrides) -> dict:
    P = yaml.safe_load((ROOT / "params" / f"{name}.yaml").read_text())
    archive = ROOT / P["data_root"]
    if not archive.is_file():
        pytest.skip(f"shared file absent: {archive}")
    return {**P, **overrides}


def fresh_cache(tmp_path: Path, monkeypatch) -> Path:
    decoded = cache_dir("data")
    root = tmp_path / "cache"
    root.mkdir()
    (root / "data").symlink_to(decoded, target_is_directory=True)
    monkeypatch.setenv("NETANATOMY_CACHE", str(root))
    return root


def interrupt_once(monkeypatch, module) -> None:
    real, calls = module.fit, []

    def fit(*args, **kwargs):
        if calls:
            return real(*args, **kwargs)
        calls.append(1)
        real(*args, stop_after_epoch=1, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "fit", fit)
