"""NAD on CIFAR-10: the gates of the CIFAR ResNets, and a smoke run of every CIFAR-10 parameter set of the
three NAD notebooks on the shared real data (skipped, with the missing path named, without it)."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from netanatomy import models, reproduce
from netanatomy.hooks import channel_gates, trace
from netanatomy.nad import method

ROOT = Path(__file__).resolve().parents[1]

#: Each CIFAR-10 set with the overrides that shrink it to a few images (the search, the mosaics, the sweep).
SMALL = {"images_per_class": 2, "epochs": 1, "batch_size": 2, "progress": False, "device": "cpu"}
SETS = {
    ("nad_findpath", "cifar10_resnet20"): {"sweep_betas": [1.0], "sweep_classes": [3]},
    ("nad_findpath", "cifar10_resnet56"): {"sweep_betas": [1.0], "sweep_classes": [3]},
    ("nad_hitrate", "cifar10_resnet20"): {"search_seeds": 1, "n_mosaics": 4},
    ("nad_hitrate", "cifar10_resnet56"): {"search_seeds": 1, "n_mosaics": 4},
    ("nad_subarch", "cifar10_resnet20"): {"search_seeds": 1, "n_random": 2},
    ("nad_subarch", "cifar10_resnet56"): {"search_seeds": 1, "n_random": 2},
}


@pytest.mark.parametrize("name, depth", [("resnet20", 20), ("resnet56", 56)])
def test_cifar_resnet_gates_after_the_stem_relu_and_every_block(name, depth):
    """One gate after the stem's ReLU and one after each of the 3n residual blocks (16/32/64 channels at
    32/16/8 px), as upstream gates ResNet-50 after its stem and every bottleneck; all-ones gates leave the
    output unchanged, and the stem gate sees the ReLU's output (non-negative)."""
    torch.manual_seed(0)
    net = models.build(name, 10).eval()
    layers = models.layers(name, "nad")
    n = (depth - 2) // 6
    assert layers == ["relu"] + [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(n)]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), trace(net, layers, detach=True) as t:
        plain = net(x)
    shapes = [tuple(t[n_][0].shape) for n_ in layers]
    assert shapes == [(16, 32, 32)] * (n + 1) + [(32, 16, 16)] * n + [(64, 8, 8)] * n
    assert (t["relu"] >= 0).all() and (t["relu"] == 0).any()
    assert sum(s[0] for s in shapes) == 16 + 112 * n
    ones = {n_: torch.ones(s[0]) for n_, s in zip(layers, shapes)}
    with torch.no_grad(), channel_gates(net, ones):
        torch.testing.assert_close(net(x), plain, rtol=0, atol=0)
    assert method.layer_channels(net, layers, x[0]) == {n_: s[0] for n_, s in zip(layers, shapes)}


def _shared_paths(given: dict) -> list[str]:
    values = [v for value in given.values() for v in (value.values() if isinstance(value, dict) else [value])]
    return [v for v in values if isinstance(v, str) and "shared/" in v]


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("notebook, set_name", list(SETS), ids=[f"{nb}.{s}" for nb, s in SETS])
def test_cifar10_set_runs_on_a_few_images(notebook, set_name, tmp_path, monkeypatch):
    """params/<notebook>.<set>.yaml with 2 training images per class, 1 epoch (and few mosaics / sweep
    classes): the whole notebook on ../shared/data, labelled with its data."""
    pfile = reproduce.params_file(notebook, set_name, ROOT / "params")
    given = yaml.safe_load(pfile.read_text())
    missing = [p for p in _shared_paths(given) if not (ROOT / p).exists()]
    if missing:
        pytest.skip(f"shared file absent: {', '.join(missing)} (see ../shared/data/README.md)")
    few = tmp_path / pfile.name
    few.write_text(yaml.safe_dump(given | SMALL | SETS[notebook, set_name]))
    monkeypatch.setenv("NETANATOMY_REPORTS", str(tmp_path))   # the kernel writes its tables here
    outcome = reproduce.run_one(reproduce.Run(notebook, notebook, few), tmp_path, ROOT / "notebooks")
    assert outcome.status == "ok", f"failed in cell {outcome.failing_cell}: {outcome.error}"
    provenance = json.loads((tmp_path / notebook / "provenance.json").read_text())
    assert provenance["params"]["dataset"] == "cifar10_jpeg" and provenance["params"]["normalize"] == "imagenet"
    if notebook == "nad_hitrate":
        findings = " ".join(json.loads((tmp_path / notebook / "findings.json").read_text())["findings"])
        assert "over 4 mosaics" in findings
    if notebook == "nad_subarch":
        pairs = (tmp_path / notebook / "pairs.csv").read_text().splitlines()
        assert len(pairs) == 1 + 45 and any(line.startswith("cat / dog,") for line in pairs)
