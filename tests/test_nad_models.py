"""NAD's gate layouts on the paper's four networks at 224 px (random weights): where upstream's Mask modules
sit (hujiecpp/NAD models/imagenet/*.py), the DARTS network built from its genotype, and gates that change
nothing when all ones."""

import pytest
import torch
import torchvision

from netanatomy import models
from netanatomy.darts import DARTS_V2, NetworkImageNet
from netanatomy.hooks import channel_gates, trace
from netanatomy.nad import method

#: (channels, side) of every gated output at 224 px, in upstream's order.
UPSTREAM_LAYOUT = {
    # cfg 'D': 64, msk, 64, M, msk, 128, msk, 128, M, msk, 256, msk, 256, msk, 256, M, msk, 512, msk, 512, msk,
    # 512, M, msk, 512, msk, 512, msk, 512, M, then the 7x7 average pool and the last mask
    "vgg16": [(64, 224), (64, 112), (128, 112), (128, 56), (256, 56), (256, 56), (256, 28), (512, 28), (512, 28),
              (512, 14), (512, 14), (512, 14), (512, 7)],
    # mask after the max-pool, then one per bottleneck (3, 4, 6, 3)
    "resnet50": [(64, 56)] + [(256, 56)] * 3 + [(512, 28)] * 4 + [(1024, 14)] * 6 + [(2048, 7)] * 3,
    # mask0 after pool0; mask1..3 after dense blocks 1-3; each transition's mask after its pool; mask5 after
    # norm5 + relu5
    "densenet121": [(64, 56), (256, 56), (128, 28), (512, 28), (256, 14), (1024, 14), (512, 7), (1024, 7)],
    # mask0 after stem0, mask1 after stem1, then every cell's concatenated output (reductions at cells 4 and 9)
    "darts": [(48, 56), (48, 28)] + [(192, 28)] * 4 + [(384, 14)] * 5 + [(768, 7)] * 5,
}


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return {name: models.build(name, 10).eval() for name in UPSTREAM_LAYOUT}


@pytest.mark.parametrize("name", list(UPSTREAM_LAYOUT))
def test_gated_maps_match_upstream_layout_at_224(name, built):
    model, layers = built[name], models.layers(name, "nad")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), trace(model, layers, detach=True) as t:
        model(x)
    assert [(t[n].shape[1], t[n].shape[-1]) for n in layers] == UPSTREAM_LAYOUT[name]
    assert all(t[n].shape[-2] == t[n].shape[-1] for n in layers)
    if name == "vgg16":                                          # 5 of 13 at pooled resolution, the last 7x7
        assert sum(n in ("features.4", "features.9", "features.16", "features.23", "avgpool") for n in layers) == 5
    if name == "densenet121":                                    # the last gate reads rectified values
        assert float(t["features.relu5"].min()) >= 0
    if name == "darts":
        assert sum(c for c, _ in UPSTREAM_LAYOUT[name]) == 6624
        assert method.layer_channels(model, layers, x[0]) == {n: c for n, (c, _) in zip(layers, UPSTREAM_LAYOUT[name])}


@pytest.mark.parametrize("name", list(UPSTREAM_LAYOUT))
def test_all_ones_gates_reproduce_the_ungated_output(name, built):
    model, layers = built[name], models.layers(name, "nad")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = model(x)
        with channel_gates(model, {n: torch.ones(c) for n, (c, _) in zip(layers, UPSTREAM_LAYOUT[name])}):
            gated = model(x)
        with channel_gates(model, {layers[-1]: torch.zeros(UPSTREAM_LAYOUT[name][-1][0])}):
            closed = model(x)
    assert torch.equal(plain, gated)
    head = models.head(model)[1]                                   # the last gate closed: only the bias is left
    torch.testing.assert_close(closed, head.bias.expand_as(closed))


def test_densenet_relu5_changes_nothing_and_loads_torchvision_weights(built):
    ours = built["densenet121"]
    plain = torchvision.models.densenet121(weights=None, num_classes=10).eval()
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(ours(x), plain(x))
    assert set(ours.state_dict()) == set(plain.state_dict())


def test_darts_network_follows_the_genotype_and_the_darts_code():
    net = NetworkImageNet(1000)
    assert len(net.cells) == 14 and [i for i, c in enumerate(net.cells) if len(c._ops) and
                                     isinstance(c._ops[0], torch.nn.MaxPool2d)] == [4, 9]   # reduce: max_pool first
    assert net.cells[0]._indices == [i for _, i in DARTS_V2.normal] and net.cells[4]._concat == [2, 3, 4, 5]
    # parameters without the auxiliary head: 4.7M in the DARTS paper (Liu et al. 2019, Table 3, ImageNet)
    params = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("auxiliary_head"))
    assert round(params / 1e6, 1) == 4.7
    keys = set(net.state_dict())                                   # the DARTS code's names (published checkpoints)
    assert {"stem0.0.weight", "stem1.1.weight", "cells.1.preprocess0.op.1.weight", "cells.5.preprocess0.conv_1.weight",
            "cells.0._ops.0.op.1.weight", "cells.0._ops.0.op.7.running_var", "cells.13._ops.7.op.2.weight",
            "auxiliary_head.features.5.weight", "auxiliary_head.classifier.weight", "classifier.bias"} <= keys
    assert models.build("darts", 365).classifier.out_features == 365
