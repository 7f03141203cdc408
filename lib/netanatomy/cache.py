"""The one caching seam: every cached result of the package goes through `cached` (files) or
`cached_folder` (folders).

- A result lives at ``cache_dir(*parts) / f"{name}-{cache_key(**key)}.pt"`` (`entry`): the key
  holds everything the result depends on, so a changed input gives a new file.
- It is written atomically (temporary file, then rename: never half-written) and loaded when
  present. A file that cannot be read (truncated, overwritten, from another version) is *damaged*:
  it is moved aside to ``<file>.damaged``, a `CacheWarning` names it, and the result is computed
  again.
- A long computation resumes: `compute(checkpoint)` receives a `Checkpoint` beside the result file
  (``<name>-<key>.ckpt.pt``) to `save` its state to now and then and `load` on start (a damaged
  checkpoint is moved aside and the computation starts over). The checkpoint is removed once the
  result is written.
- Two processes computing the same result at once are serialised by a lock file: the second waits,
  then loads what the first wrote. Both succeed, and one good copy remains.
- Under torchrun the processes of one run compute a missing result together: rank 0 takes the lock
  and writes, the other ranks compute beside it without lock or write (`follower`).

Our own cache files may hold pandas-free plain Python, tensors and numpy arrays; they are loaded
with ``weights_only=False`` because the package wrote them (never point the cache at files from
elsewhere).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch

from .errors import DataError
from .runtime import atomic_save, atomic_write_json, cache_dir, cache_key, record_phase, share_mode

T = TypeVar("T")


class CacheWarning(UserWarning):
    """A cache or checkpoint file was damaged and is being recomputed."""


def entry(parts: str | tuple[str, ...], name: str, **key: Any) -> Path:
    """Path of a cached result: ``cache_dir(*parts) / f"{name}-{cache_key(**key)}.pt"``."""
    parts = (parts,) if isinstance(parts, str) else tuple(parts)
    return cache_dir(*parts) / f"{name}-{cache_key(**key)}.pt"


def torch_load(path: Path) -> Any:
    """torch.load on CPU of a file this package wrote."""
    return torch.load(path, map_location="cpu", weights_only=False)


def set_aside(path: Path, error: BaseException | str) -> Path:
    """Move a damaged file to ``<path>.damaged`` and warn, naming it; return the new path."""
    aside = path.with_name(path.name + ".damaged")
    os.replace(path, aside)
    if not isinstance(error, str):
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else "no message"
        error = f"{type(error).__name__}: {first}"
    warnings.warn(CacheWarning(f"{path}: damaged cache file ({error}); moved to {aside.name} and recomputed"),
                  stacklevel=3)
    return aside


def read(path: Path, load: Callable[[Path], Any] = torch_load) -> Any | None:
    """`load(path)`, or None when the file is missing or damaged (a damaged file is set aside)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return load(path)
    except Exception as exc:  # noqa: BLE001 - any failure to read our own file means damage
        set_aside(path, exc)
        return None


@contextmanager
def lock(path: Path) -> Iterator[None]:
    """An exclusive lock held while the result at `path` is computed (a file under ``cache_dir("locks")``
    named by the hash of the resolved path, so no lock file clutters the result's folder)."""
    lock_path = cache_dir("locks") / f"{hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:20]}.lock"
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Checkpoint:
    """The resumable state of a long computation, saved atomically beside its result."""

    def __init__(self, path: Path | None):
        self.path = None if path is None else Path(path)

    def load(self) -> Any | None:
        """The last saved state, or None (none saved, caching off, or damaged: set aside)."""
        return None if self.path is None else read(self.path)

    def save(self, state: Any) -> None:
        if self.path is not None:
            atomic_save(state, self.path)

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def checkpoint_of(path: Path) -> Checkpoint:
    """The checkpoint of the result at `path` (``x.pt`` -> ``x.ckpt.pt``)."""
    path = Path(path)
    return Checkpoint(path.with_name(path.stem + ".ckpt" + path.suffix))


def follower() -> bool:
    """Under torchrun, a process other than rank 0 (env RANK > 0). It computes a missing result beside
    rank 0 (the computation may hold collectives, e.g. DDP training, so it must not wait for rank 0's
    lock) and writes nothing: rank 0 writes the result and its checkpoints."""
    return int(os.environ.get("RANK", "0")) > 0


def cached(path: Path | None, compute: Callable[[Checkpoint], T], *, load: Callable[[Any], T] | None = None,
           dump: Callable[[T], Any] | None = None, read_file: Callable[[Path], Any] = torch_load,
           write_file: Callable[[Any, Path], Any] = atomic_save, label: str | None = None) -> T:
    """The result at `path` when present, else ``compute(checkpoint)``, saved there.

    `dump(result)` is what is saved (default: the result) and `load(saved)` turns it back into a
    result (default: as saved). `read_file(path)` / `write_file(obj, path)` are the file format
    (default torch; `write_file` must write atomically; `read_file` raises on a damaged file).
    ``path=None`` turns caching off: `compute` runs with a checkpoint that saves nothing. The time
    taken is recorded as phase `label` (default: the file name) of the run's profile.
    """
    load = load or (lambda saved: saved)
    dump = dump or (lambda result: result)
    if path is None:
        return compute(Checkpoint(None))
    path = Path(path)
    label = label or path.stem
    t0 = time.perf_counter()
    saved = read(path, read_file)
    if saved is None and follower():
        return compute(checkpoint_of(path))
    if saved is None:
        with lock(path):
            saved = read(path, read_file)  # another process may have finished it meanwhile
            if saved is None:
                checkpoint = checkpoint_of(path)
                result = compute(checkpoint)
                write_file(dump(result), path)
                checkpoint.clear()
                record_phase(label, time.perf_counter() - t0, "computed")
                return result
    record_phase(label, time.perf_counter() - t0, "loaded")
    return load(saved)


MARKER = ".netanatomy.json"


def folder_key(folder: Path) -> str | None:
    """The key a folder made by `cached_folder` was built for (None: not such a folder, or unreadable)."""
    try:
        return json.loads((Path(folder) / MARKER).read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def cached_folder(final: Path, key: str, build: Callable[[Path], None], *, replace_own: bool = True) -> Path:
    """A folder built by `build(tmp)` into a temporary sibling, marked with `key` and renamed to `final`.

    A finished folder with the same key is reused. One built by this function for another key is
    replaced (``replace_own=True``) or refused; a folder this function did not build is never
    touched (DataError). Concurrent builders are serialised by a lock: the second reuses the
    first's folder.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with lock(final):
        if final.exists():
            found = folder_key(final)
            if found == key:
                return final
            if found is None and not (final / MARKER).exists():
                raise DataError(final, "exists and was not written by netanatomy; remove it or choose another folder",
                                expected="a new or empty folder")
            if not replace_own:
                raise DataError(final, "was made from other inputs; remove it or choose another folder",
                                expected="a folder made from these inputs")
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
        try:
            build(tmp)
            atomic_write_json(tmp / MARKER, {"key": key})
            share_mode(tmp, folder=True)
            if final.exists():
                old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
                os.replace(final, old / final.name)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final
