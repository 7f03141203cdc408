import pytest
import torch
from torch import nn

from netanatomy import hooks


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU(), nn.Conv2d(2, 1, 1, bias=False))


def _no_hooks_left(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_trace_captures_and_removes_hooks():
    m = _tiny()
    x = torch.randn(2, 1, 3, 3)
    with hooks.trace(m, ["1"]) as t:
        m(x)
    torch.testing.assert_close(t["1"], torch.relu(m[0](x)))
    assert _no_hooks_left(m)


def test_hooks_removed_even_when_forward_fails():
    m = _tiny()
    with pytest.raises(RuntimeError):
        with hooks.trace(m, ["0", "1"]):
            m(torch.randn(2, 5, 3, 3))  # wrong channel count
    assert _no_hooks_left(m)


def test_edit_and_stop():
    m = _tiny()
    with torch.no_grad():
        m[2].weight.fill_(1.0)
    x = torch.randn(2, 1, 3, 3)
    with hooks.trace(m, edit={"1": lambda out: out * 0}) as t:
        y = m(x)
    assert torch.count_nonzero(y) == 0 and torch.count_nonzero(t["1"]) == 0
    with hooks.trace(m, ["1"], stop=True) as t:
        assert hooks.run(m, x) is None
    assert t["1"].shape == (2, 2, 3, 3)
    assert _no_hooks_left(m)


def test_channel_gates_per_channel_and_per_sample():
    m = _tiny()
    x = torch.randn(2, 1, 3, 3)
    with hooks.trace(m, ["1"]) as t:
        m(x)
    base = t["1"]
    with hooks.channel_gates(m, {"1": torch.tensor([1.0, 0.0])}, capture=["1"]) as g:
        m(x)
    torch.testing.assert_close(g["1"][:, 0], base[:, 0])
    assert torch.count_nonzero(g["1"][:, 1]) == 0
    per_sample = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    with hooks.channel_gates(m, {"1": lambda: per_sample}, capture=["1"]) as g:
        m(x)
    torch.testing.assert_close(g["1"] , base * per_sample[:, :, None, None])
    assert _no_hooks_left(m)
