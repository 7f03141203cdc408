"""Named-layer hooks: capture, edit or stop a forward pass; hooks are always removed afterwards."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .errors import ParamError


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early (caught by `trace`)."""


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name` (dotted path); a clear error lists the valid names."""
    modules = dict(model.named_modules())
    if name not in modules:
        valid = [n for n in modules if n]
        shown = ", ".join(valid[:60]) + (" ..." if len(valid) > 60 else "")
        raise ParamError("layers", f"no layer named {name!r} in {type(model).__name__}; valid names: {shown}")
    return modules[name]


class Trace:
    """What `trace` captured: `outputs[name]` is the (possibly edited) output of each layer."""

    def __init__(self) -> None:
        self.outputs: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.outputs[name]


@contextmanager
def trace(model: nn.Module, layers: Sequence[str] = (), *,
          edit: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
          stop: bool = False, detach: bool = False) -> Iterator[Trace]:
    """Capture the outputs of `layers` (and of the layers in `edit`) during forward passes.

    `edit[name](output)` replaces that layer's output. With `stop=True` the forward pass ends once
    the last listed layer ran (call `run(model, x)` or catch `StopForward`). `detach=True` stores
    detached outputs. Hooks are removed in `finally`, also when the forward pass fails.
    """
    edit = dict(edit or {})
    names = list(dict.fromkeys(list(layers) + list(edit)))
    result = Trace()
    handles = []
    remaining = set(names)

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            if name in edit:
                output = edit[name](output)
            result.outputs[name] = output.detach() if detach else output
            remaining.discard(name)
            if stop and not remaining:
                raise StopForward()
            return output
        return hook

    try:
        for name in names:
            handles.append(get_module(model, name).register_forward_hook(make_hook(name)))
        yield result
    finally:
        for handle in handles:
            handle.remove()


def run(model: nn.Module, x: torch.Tensor):
    """Call model(x), treating an early stop from `trace(..., stop=True)` as success (returns None then)."""
    try:
        return model(x)
    except StopForward:
        return None


def scale_channels(output: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Multiply an (N, C, ...) output by a gate of shape (C,) or (N, C), broadcast over space."""
    if gate.dim() == 1:
        gate = gate.unsqueeze(0)
    return output * gate.reshape(*gate.shape, *([1] * (output.dim() - 2))).to(output.dtype)


@contextmanager
def channel_gates(model: nn.Module, gates: Mapping[str, torch.Tensor | Callable[[], torch.Tensor]],
                  capture: Sequence[str] = ()) -> Iterator[Trace]:
    """Multiply each named layer's output channels by a gate ((C,) or (N, C), or a callable giving one).

    Used by NAD's per-class gates and by channel pruning. Yields a Trace holding the gated outputs.
    """
    def editor(gate):
        return lambda out: scale_channels(out, gate() if callable(gate) else gate)

    with trace(model, capture, edit={name: editor(g) for name, g in gates.items()}) as t:
        yield t
