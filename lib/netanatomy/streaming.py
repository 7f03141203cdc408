"""Streaming statistics over a data set, with one small protocol (as baukit's ``runningstats``).

A statistic has

- ``add(...)``: take one batch (its own arguments),
- ``state_dict()`` / ``load_state_dict(state)``: its whole state as plain tensors and numbers (on
  CPU), so a long pass checkpoints and resumes,
- ``merge(other)`` where merging is exact: the same statistic of another part of the data added in
  (for passes split over processes).

Statistics allocate their buffers on the first `add` (shapes come from the data), so they are built
before anything is known about the data. `Stats` groups named statistics into one. `tally` is the one
loop that feeds a data set's batches to statistics, saving a checkpoint every few batches and
resuming from it (baukit's ``tally(stat, dataset, cache=...)``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

from .cache import Checkpoint
from .data import Subset, make_loader


@runtime_checkable
class Stat(Protocol):
    """What every streaming statistic provides (``merge`` too where it is exact)."""

    def add(self, *args: Any, **kwargs: Any) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: Mapping) -> None: ...


def _cpu(value):
    return value.cpu() if isinstance(value, torch.Tensor) else value


class Sum:
    """A running float64 sum of equally shaped tensors (counts, totals); merges exactly."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None

    def add(self, value: torch.Tensor) -> None:
        value = value.double()
        self.total = value.clone() if self.total is None else self.total.to(value.device) + value

    def merge(self, other: "Sum") -> None:
        if other.total is not None:
            self.add(other.total)

    def state_dict(self) -> dict:
        return {"total": _cpu(self.total)}

    def load_state_dict(self, state: Mapping) -> None:
        self.total = state["total"]


class TopK:
    """Per row, the `k` largest values seen in a stream of (rows, m) blocks, in descending order.

    Each row is its own stream (e.g. one unit's activations). ``count`` is how many values per row
    were added. With ``index=True`` each value keeps the index it was added with (e.g. an image's
    number in the data set) and ties keep the lower index first, so the kept items do not depend
    on how the stream was cut into blocks. Merging two parts' top-k is exact.
    """

    def __init__(self, k: int, index: bool = False) -> None:
        self.k, self.index = int(k), index
        self.values: torch.Tensor | None = None
        self.indices: torch.Tensor | None = None
        self.count = 0

    def add(self, values: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        """values (rows, m); with ``index=True`` also indices (m,) or (rows, m)."""
        self._push(values, None if indices is None else indices.to(values.device).expand_as(values))
        self.count += values.shape[1]

    def _push(self, values: torch.Tensor, indices: torch.Tensor | None) -> None:
        if self.values is not None:
            values = torch.cat([self.values.to(values.device), values], 1)
            if self.index:
                indices = torch.cat([self.indices.to(values.device), indices], 1)
        k = min(self.k, values.shape[1])
        if not self.index:
            self.values = torch.topk(values, k, dim=1, sorted=True).values
            return
        order = torch.argsort(indices, dim=1, stable=True)  # ties: lower index first
        values, indices = values.gather(1, order), indices.gather(1, order)
        keep = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
        self.values, self.indices = values.gather(1, keep), indices.gather(1, keep)

    def merge(self, other: "TopK") -> None:
        if other.values is not None:
            self._push(other.values, other.indices)
            self.count += other.count

    def state_dict(self) -> dict:
        return {"k": self.k, "count": self.count, "values": _cpu(self.values), "indices": _cpu(self.indices)}

    def load_state_dict(self, state: Mapping) -> None:
        self.k, self.count = int(state["k"]), int(state["count"])
        self.values, self.indices = state["values"], state["indices"]


class Stats(dict):
    """Named statistics that act as one (state and merge member by member)."""

    def state_dict(self) -> dict:
        return {name: stat.state_dict() for name, stat in self.items()}

    def load_state_dict(self, state: Mapping) -> None:
        for name, stat in self.items():
            stat.load_state_dict(state[name])

    def merge(self, other: "Stats") -> None:
        for name, stat in self.items():
            stat.merge(other[name])


def tally(stat: Stat, dataset, checkpoint: Checkpoint | None = None, *, batch_size: int = 64,
          num_workers: int = 0, collate_fn: Callable | None = None, checkpoint_every: int = 200,
          progress: bool = True, desc: str = "tally") -> Iterator:
    """Yield `dataset`'s batches in order for the caller to add to `stat`, checkpointing as it goes.

    Every `checkpoint_every` batches (unless the data set is done) the state ``{"done": items,
    "stat": stat.state_dict()}`` is saved to `checkpoint`; a saved state is loaded into `stat` first
    and the items it covers are skipped, so an interrupted pass resumes where it stopped. Use it as
    ``for batch in tally(stat, ds, checkpoint): stat.add(f(batch))``.
    """
    n = len(dataset)
    state = checkpoint.load() if checkpoint is not None else None
    start = 0
    if state is not None:
        stat.load_state_dict(state["stat"])
        start = int(state["done"])
    loader = make_loader(Subset(dataset, range(start, n)), batch_size, num_workers=num_workers, pin_memory=False,
                         collate_fn=collate_fn)
    for batch_no, batch in enumerate(tqdm(loader, desc=desc, disable=not progress, leave=False), start=1):
        yield batch
        done = min(n, start + batch_no * batch_size)
        if checkpoint is not None and batch_no % checkpoint_every == 0 and done < n:
            checkpoint.save({"done": done, "stat": stat.state_dict()})
