"""The ImageNet DARTS network (Liu, Simonyan and Yang, ICLR 2019), NAD's fourth architecture.

Built from a genotype as the DARTS code builds its ImageNet evaluation network (quark0/darts
`cnn/model.py` NetworkImageNet, `cnn/operations.py`, `cnn/genotypes.py`), which NAD copies
(hujiecpp/NAD `models/imagenet/darts.py`, `models/place/genotypes.py`): genotype DARTS_V2, C = 48,
14 cells, reduction cells at 14 // 3 = 4 and 2 * 14 // 3 = 9, the auxiliary head after cell 9.
Module names and parameter layout follow that code, so its published checkpoints load unchanged.

NAD gates 16 positions: the outputs of `stem0` and `stem1` and each cell's concatenated output
(`cells.0` ... `cells.13`): 48 + 48 + 4 x 192 + 5 x 384 + 5 x 768 = 6,624 channels.

Differences from that code, none of which changes an evaluation-mode output: `forward` returns the
logits only (the auxiliary head is kept so the published weights load; upstream returns
``(logits, logits_aux)`` and fills `logits_aux` in training mode only), drop-path is not
implemented (upstream applies it in training mode only), and the global pooling is adaptive
(upstream's ``AvgPool2d(7)`` is the same at the 224 px input the network was trained on).
As upstream, `stem1` starts with an in-place ReLU, so what a hook reads at `stem0` is rectified
once `stem1` has run (upstream's NAD hooks read the stem0 mask's output the same way).
"""

from __future__ import annotations

from collections import namedtuple

import torch
from torch import nn

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

#: quark0/darts cnn/genotypes.py DARTS_V2 (also hujiecpp/NAD models/place/genotypes.py; DARTS = DARTS_V2).
DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5],
)


def _relu_conv_bn(c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int = 1,
                  separable: bool = False) -> list[nn.Module]:
    """ReLU, (depthwise conv + pointwise conv when separable, else one conv), BN."""
    convs = [nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation, groups=c_in, bias=False),
             nn.Conv2d(c_in, c_out, 1, bias=False)] if separable else \
        [nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, bias=False)]
    return [nn.ReLU(inplace=False), *convs, nn.BatchNorm2d(c_out)]


class ReLUConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.op = nn.Sequential(*_relu_conv_bn(c_in, c_out, kernel, stride, padding))

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int):
        super().__init__()
        self.op = nn.Sequential(*_relu_conv_bn(c_in, c_out, kernel, stride, padding, dilation, separable=True))

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked dilation-1 separable convolutions (the first carries the stride)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.op = nn.Sequential(*_relu_conv_bn(c_in, c_in, kernel, stride, padding, separable=True),
                                *_relu_conv_bn(c_in, c_out, kernel, 1, padding, separable=True))

    def forward(self, x):
        return self.op(x)


class FactorizedReduce(nn.Module):
    """Stride-2 reduction by two 1x1 convolutions on offset grids, concatenated."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def operation(name: str, c: int, stride: int) -> nn.Module:
    """One DARTS operation on c channels (the primitives DARTS_V2 uses)."""
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c)
    if name == "sep_conv_3x3":
        return SepConv(c, c, 3, stride, 1)
    if name == "dil_conv_3x3":
        return DilConv(c, c, 3, stride, 2, 2)
    raise ValueError(f"operation {name!r} is not used by DARTS_V2")


class Cell(nn.Module):
    """A normal or reduction cell: two preprocessed inputs, four nodes of two operations each, the
    concatenation of the `concat` nodes as output."""

    def __init__(self, genotype: Genotype, c_prev_prev: int, c_prev: int, c: int, reduction: bool,
                 reduction_prev: bool):
        super().__init__()
        self.preprocess0 = FactorizedReduce(c_prev_prev, c) if reduction_prev else ReLUConvBN(c_prev_prev, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0)
        ops, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal, genotype.normal_concat)
        self._ops = nn.ModuleList([operation(name, c, 2 if reduction and index < 2 else 1) for name, index in ops])
        self._indices = [index for _, index in ops]
        self._concat = list(concat)
        self.multiplier = len(concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(len(self._ops) // 2):
            states.append(self._ops[2 * i](states[self._indices[2 * i]]) +
                          self._ops[2 * i + 1](states[self._indices[2 * i + 1]]))
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHeadImageNet(nn.Module):
    """The auxiliary classifier after cell 2 * layers // 3 (kept for the published checkpoints; unused in `forward`)."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True), nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(768, num_classes)


class NetworkImageNet(nn.Module):
    """DARTS' ImageNet network: two stems (each stride 2 twice / once), `layers` cells, pooling, linear."""

    def __init__(self, num_classes: int = 1000, C: int = 48, layers: int = 14, genotype: Genotype = DARTS_V2,
                 auxiliary: bool = True):
        super().__init__()
        self.stem0 = nn.Sequential(
            nn.Conv2d(3, C // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C // 2), nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C))
        self.stem1 = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(C))
        c_prev_prev, c_prev, c_curr = C, C, C
        self.cells = nn.ModuleList()
        reduction_prev = True
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            c_curr = c_curr * 2 if reduction else c_curr
            cell = Cell(genotype, c_prev_prev, c_prev, c_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            c_prev_prev, c_prev = c_prev, cell.multiplier * c_curr
            if i == 2 * layers // 3:
                c_auxiliary = c_prev
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadImageNet(c_auxiliary, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(torch.flatten(self.global_pooling(s1), 1))
