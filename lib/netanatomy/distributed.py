"""Sharing one heavy step's work among the processes of a torchrun launch (gloo on CPU, NCCL on CUDA).

Every function works unchanged in a single process (world size 1: nothing is joined or exchanged).

- `world()`: (rank, world size) of this process; joins the process group on first use.
- `device(requested)`: the device of this rank (its own GPU, LOCAL_RANK, under torchrun on CUDA).
- `block(n)`: this rank's contiguous share of ``range(n)`` (the ranks in order cover it exactly once).
- `strided(items)`: this rank's items ``items[rank::world]``.
- `gather(obj)`: every rank's `obj`, in rank order, on every rank.
- `own_checkpoint(checkpoint)`: this rank's own checkpoint in place of the one `cache.cached` gives
  (``<name>.ckpt.rank<r>of<w>.pt``): a killed run resumes with the same number of processes. A rank
  clears it once every rank holds its part (after `gather`), before rank 0 writes the result.
- `launched()`: (rank, world size) as torchrun launched this process, without joining the process group.
- `alone()`: within it, this rank computes (and caches) whole results as a one-process run would
  (no DDP, it writes its own cache files): for many independent runs dealt out over the ranks.
- `wait_for(paths)`: a barrier on the cache: returns once every file of `paths` exists.
- `launch(notebook, params, nproc)`: a notebook's heavy step (`python -m netanatomy run`) under
  torchrun in `nproc` CPU processes, from a notebook kernel; its results land in the cache.

The result a sharded step computes is gathered on every rank and written once, by rank 0, through
`netanatomy.cache.cached` (the other ranks are its `follower`s).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import yaml

from .cache import Checkpoint
from .errors import NetanatomyError
from .runtime import atomic_write_text, environment, pick_device

T = TypeVar("T")
#: a line of output that reports an error (``ParamError: ...``, ``RuntimeError: ...``)
ERROR_LINE = re.compile(r"^\w*(Error|Exception): ")


def world() -> tuple[int, int]:
    """(rank, world size); under torchrun (WORLD_SIZE > 1) joins the process group (NCCL when CUDA is
    available, else gloo) unless already joined."""
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def device(requested: str | torch.device | None = "auto") -> torch.device:
    """`runtime.pick_device(requested)`, but this rank's own GPU when it is CUDA under torchrun."""
    dev = pick_device(requested)
    if dev.type == "cuda" and dev.index is None and world()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def block(n: int) -> range:
    """This rank's contiguous share of ``range(n)``: rank r of w gets ``[r * n // w, (r + 1) * n // w)``."""
    rank, size = world()
    return range(rank * n // size, (rank + 1) * n // size)


def strided(items: Sequence[T]) -> list[T]:
    """This rank's items ``items[rank::world]`` (spreads uneven work, e.g. classes, evenly)."""
    rank, size = world()
    return list(items[rank::size])


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank; ``[obj]`` in one process."""
    size = world()[1]
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


def own_checkpoint(checkpoint: Checkpoint) -> Checkpoint:
    """This rank's checkpoint in place of `checkpoint` (``x.ckpt.pt`` -> ``x.ckpt.rank<r>of<w>.pt``);
    `checkpoint` itself in one process or when it saves nothing."""
    rank, size = world()
    if size == 1 or checkpoint.path is None:
        return checkpoint
    path = checkpoint.path
    return Checkpoint(path.with_name(f"{path.stem}.rank{rank}of{size}{path.suffix}"))


def launched() -> tuple[int, int]:
    """(rank, world size) as torchrun launched this process (RANK, WORLD_SIZE; (0, 1) outside torchrun);
    joins nothing."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Run the block as a one-process run: torchrun's RANK and WORLD_SIZE read as 0 and 1 (so `train.fit`
    trains without DDP and `cache.cached` writes this rank's results itself), on this rank's own GPU
    on CUDA. Results are bit-identical to a one-process run's on the same device and thread count.
    Must be entered before the process group is joined (`world()`), which it would bypass."""
    if dist.is_initialized():
        raise RuntimeError("distributed.alone() needs the process group not yet joined")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    with environment(RANK="0", WORLD_SIZE="1"):
        yield


def wait_for(paths: Iterable[Path], poll_s: float = 1.0) -> None:
    """A barrier on the cache: returns once every file of `paths` exists (each rank wrote its own;
    torchrun stops every rank when one fails, so a failed run does not leave the others waiting).
    Unlike a collective barrier it has no timeout, so ranks may finish runs of any length apart."""
    missing = [Path(p) for p in paths]
    while missing := [p for p in missing if not p.is_file()]:
        time.sleep(poll_s)


def launch(notebook: str, params: Mapping[str, Any], nproc: int, threads: int | None = None,
           tail_lines: int = 40) -> None:
    """Run `notebook`'s heavy step as ``python -m torch.distributed.run --standalone --nproc_per_node=<nproc>
    -m netanatomy run <notebook> -f <params as a temporary YAML file>`` (CPU: gloo), with `threads`
    CPU threads per process (None: the cores shared out, at least 1), printing its output as it comes.
    Meant for a notebook kernel: the step writes the cache entries the notebook then reads. A failed
    run stops with one NetanatomyError naming the first error a process printed (e.g. ``ParamError: ...``)
    and carrying the last `tail_lines` lines of its output."""
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    cause = None  # the first error a rank printed (the launcher's own report follows it)
    with tempfile.TemporaryDirectory(prefix=f"netanatomy-{notebook}-") as folder:
        path = atomic_write_text(Path(folder) / "params.yaml", yaml.safe_dump(dict(params), sort_keys=False))
        package_root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(name, None)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "netanatomy", "run", notebook, "-f", str(path)]
        with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              bufsize=1) as proc:
            try:
                for line in proc.stdout:
                    print(line, end="", flush=True)
                    tail.append(line.rstrip("\n"))
                    cause = cause or (line.strip() if ERROR_LINE.match(line) else None)
            except BaseException:  # an interrupted kernel stops the launched processes too (torchrun forwards it)
                proc.terminate()
                raise
        if proc.returncode != 0:
            raise NetanatomyError(f"the {notebook} step in {nproc} processes (torchrun) failed with exit status "
                                  f"{proc.returncode}: {cause or 'see its output'}; its last output:\n"
                                  + "\n".join(tail))
