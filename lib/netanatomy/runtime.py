"""Seeds, devices, provenance, atomic writes and the on-disk cache."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .errors import ParamError


def repo_root() -> Path:
    """The repository root (env NETANATOMY_ROOT, else the checkout holding this package)."""
    env = os.environ.get("NETANATOMY_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parents[2]
    return here if (here / "notebooks").is_dir() else Path.cwd().resolve()


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (CPU and CUDA); return a torch Generator seeded likewise."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) picks CUDA when available, else CPU; 'cpu', 'cuda', 'cuda:1' are taken as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ParamError("device", f"{device!r} is not a device; use 'auto', 'cpu' or 'cuda'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParamError("device", f"{device!r} was asked for but CUDA is not available here; use 'auto' or 'cpu'")
    return dev


def git_revision() -> str:
    """The checkout's git revision (with '+dirty' when it has changes), or 'unknown'."""
    try:
        root = repo_root()
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (rev or "unknown") + ("+dirty" if rev and dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(params: dict | None = None, device: Any = None) -> dict:
    """What made a result: parameters, package/torch versions, git revision, device, host, time."""
    return {
        "params": _jsonable(params or {}),
        "netanatomy": __version__,
        "torch": torch.__version__,
        "git": git_revision(),
        "device": str(device) if device is not None else str(pick_device("auto")),
        "python": platform.python_version(),
        "host": platform.node(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


# ----------------------------------------------------------------------------- phase profile
_PROFILE: dict = {"path": None, "phases": []}


def start_profile(path: str | Path | None) -> None:
    """Start a run's phase profile, written to `path` (JSON) after every phase (None: kept in memory)."""
    _PROFILE["path"] = None if path is None else Path(path)
    _PROFILE["phases"] = []


def record_phase(name: str, seconds: float, how: str) -> None:
    """Note that phase `name` took `seconds` (`how`: 'computed' or 'loaded' from the cache)."""
    _PROFILE["phases"].append({"phase": name, "how": how, "seconds": round(seconds, 3)})
    if _PROFILE["path"] is not None:
        atomic_write_json(_PROFILE["path"], {"phases": _PROFILE["phases"]})


def profile() -> list[dict]:
    """The phases recorded since `start_profile`."""
    return list(_PROFILE["phases"])


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the block (and the processes and kernels it starts), then restore
    them (unset again those that were unset)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def share_mode(path: str | Path, folder: bool = False) -> None:
    """Give a file (mode 0666) or folder (0777) the permissions the user's umask allows (temporary
    files are created 0600 / 0700)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if folder else 0o666) & ~mask)


def _atomic(path: str | Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        share_mode(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file in the same folder, then rename: never a half-written file."""
    return _atomic(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text atomically."""
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (numpy/torch values converted)."""
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=2) + "\n")


def atomic_write_csv(df, path: str | Path, **kwargs) -> Path:
    """Write a pandas DataFrame as CSV atomically (index off unless given)."""
    kwargs.setdefault("index", False)
    return _atomic(path, lambda tmp: df.to_csv(tmp, **kwargs))


def atomic_savez(path: str | Path, **arrays) -> Path:
    """np.savez to a temporary file, then rename."""
    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return _atomic(path, write)


def autocast(device: torch.device, enabled: bool = True, cpu: bool = False):
    """bf16 autocast on CUDA when `enabled`; a no-op context on CPU (where it does not help) unless
    `cpu` (for a computation whose user asked for bf16 explicitly, e.g. to measure what it changes)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=enabled and (device.type == "cuda" or cpu))


def resolve_path(path: str | Path | None) -> Path | None:
    """A user-given path: as given when absolute or existing from the working directory, else relative
    to the repository root (so `../shared/...` in params works from the root, notebooks/ or elsewhere)."""
    if path is None:
        return None
    p = Path(path).expanduser()
    return p if p.is_absolute() or p.exists() else repo_root() / p


def cache_dir(*parts: str) -> Path:
    """A folder under the cache root (env NETANATOMY_CACHE, default <repo>/.cache), created."""
    root = Path(os.environ.get("NETANATOMY_CACHE") or repo_root() / ".cache")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(**kwargs: Any) -> str:
    """A short stable hash of keyword arguments (JSON, sorted keys) for cache file names."""
    blob = json.dumps(_jsonable(kwargs), sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A sha1 over a model's state dict (names, dtypes, shapes and bytes), for cache keys."""
    h = hashlib.sha1(type(model).__name__.encode())
    for name, value in model.state_dict().items():
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]
