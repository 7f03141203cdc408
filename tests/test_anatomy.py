"""The anatomy comparison: ablation invariants, every method's class set on a planted network, the
planted truth of the concept world, the mask-folder converter round trip, and the heterogeneity lens
(its reader on a planted table, its layers, and its smoke run)."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.anatomy import N, expected_names, write_mask_folder
from helpers.nad import (
    SIZE,
    G,
    K,
    Planted,
    Tiny,
    planted_images,
    planted_tensors,
    search_config,
)
from netanatomy import stats, world
from netanatomy.anatomy import method, run
from netanatomy.broden import open_broden
from netanatomy.decompose.method import extract_features
from netanatomy.errors import DataError, ParamError
from netanatomy.hetero import networks
from netanatomy.hooks import get_module
from netanatomy.maskfolder import to_broden
from netanatomy.nad.method import search
from scipy.stats import spearmanr


def _data():
    x, y = planted_tensors(8, seed=1)
    return torch.utils.data.TensorDataset(x, y)


def test_ablating_every_unit_of_the_head_layer_gives_the_bias_only_answer():
    model = Tiny().eval()
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([0.1, 0.5, -0.2, 0.3]))
    pred, labels = method.ablate(model, "b2", list(range(12)), _data())
    assert torch.equal(pred, torch.full_like(pred, 1)) and len(labels) == len(pred)
    feats = extract_features(model, _data(), progress=False)
    assert torch.allclose(method.masked_logits(feats.features, model.fc, range(12)),
                          model.fc.bias.detach().expand(len(pred), -1))


def test_ablating_no_unit_changes_nothing_and_the_feature_shortcut_is_exact():
    model = Tiny().eval()
    feats = extract_features(model, _data(), progress=False)
    pred, _ = method.ablate(model, "b2", [], _data())
    assert torch.equal(pred, feats.logits.argmax(1))
    units = [0, 3, 5, 11]
    pred, _ = method.ablate(model, "b2", units, _data())
    assert torch.equal(pred, method.masked_logits(feats.features, model.fc, units).argmax(1))
    with pytest.raises(ParamError, match="12 channels"):
        method.ablate(model, "b2", [12], _data())


def test_every_method_finds_the_planted_channel_group_more_than_random_sets():
    model = Planted().eval()
    res = search(model, planted_images(), ["r1", "r2"], search_config(epochs=40, lr=0.4, batch_size=12), SIZE)
    feats = extract_features(model, _data(), progress=False)
    sets = {"NAD": method.nad_sets(res, "r2"),
            "decomposition": method.decomposition_sets(feats.features, feats.labels, K, G, G),
            "DKA": method.dka_sets(feats.features, feats.labels, model.fc.weight.detach(), G)}
    rng = np.random.default_rng(0)
    for name, s in sets.items():
        for c in range(K):
            group = range(G * c, G * (c + 1))
            rand = np.mean([method.overlap_share(r[c], group)
                            for r in (method.random_sets({c: len(s[c])}, K * G, rng) for _ in range(200))])
            assert method.overlap_share(s[c], group) > rand + 0.5, (name, c, s[c])
    # zeroing class 1's group leaves all-zero logits for its images (argmax: class 0) and the others intact
    base = feats.logits.argmax(1)
    own, other = method.class_drops(base, method.masked_logits(feats.features, model.fc, sets["DKA"][1]).argmax(1),
                                    feats.labels, 1)
    assert own == 1.0 and other == 0.0


def test_jaccard_and_its_random_expectation():
    assert method.jaccard([1, 2, 3], [2, 3, 4]) == 0.5
    assert method.jaccard([], []) == 1.0
    # two random singletons out of 4 coincide with probability 1/4
    assert method.random_jaccard(1, 1, 4, 4000, np.random.default_rng(0)) == pytest.approx(0.25, abs=0.03)


def test_planted_truth_of_the_world():
    beach = world.scene_concepts("beach")
    assert beach["object"] == ["disk", "ring"] and beach["material"] == ["sky", "water", "sand"]
    assert beach["texture"] == ["dots"] and "tan" in beach["color"] and "yellow" in beach["color"]
    assert world.scene_concepts("snow")["part"] == ["cross_arm", "cross_centre", "triangle_apex", "triangle_base"]
    truth = method.defining_concepts(list(world.SCENES))
    assert ("scene", "beach-s") in truth[0] and ("color", "tan-c") in truth[0] and ("object", "ring") in truth[0]
    assert method.precision_recall({("object", "ring"), ("object", "star")}, truth[0]) == (0.5, 1 / len(truth[0]))
    with pytest.raises(ParamError, match="planted truth"):
        method.defining_concepts(["cat"])


@pytest.mark.parametrize("layout", ["concepts", "labels"])
def test_mask_folder_round_trips_through_the_broden_reader(tmp_path, layout):
    src = write_mask_folder(tmp_path / "src", layout)
    ds = open_broden(to_broden(src, tmp_path / "broden", progress=False))
    assert len(ds) == N and set(ds.category_names) == {"object", "material"}
    names = ["-"] + ds.labels["name"].tolist()
    for i in range(N):
        image, seg, _, _ = ds[i]
        assert image.shape == (8, 8, 3)
        got = [[{names[v] for v in seg[:, r, c].tolist() if v} for c in range(4)] for r in range(4)]
        assert got == expected_names(i), (layout, i)


def test_mask_folder_refuses_an_ambiguous_or_empty_folder(tmp_path):
    src = write_mask_folder(tmp_path / "src", "concepts")
    (src / "labels.csv").write_text("value,name,category\n")
    with pytest.raises(DataError, match="exactly one"):
        to_broden(src, tmp_path / "out", progress=False)
    (tmp_path / "empty" / "masks").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        to_broden(tmp_path / "empty", tmp_path / "out2", progress=False)


@pytest.mark.parametrize("layout", ["concepts", "labels"])
def test_mask_folder_names_a_damaged_image_or_mask(tmp_path, layout):
    src = write_mask_folder(tmp_path / "src", layout)
    image = sorted((src / "images").iterdir())[1]
    mask = sorted((src / ("masks" if layout == "concepts" else "labels")).rglob("*.png"))[0]
    for victim in (image, mask):
        good = victim.read_bytes()
        victim.write_bytes(good[:len(good) // 2])
        with pytest.raises(DataError) as err:
            to_broden(src, tmp_path / f"out-{victim.stem}-{victim.parent.name}", progress=False)
        assert str(victim) in str(err.value) and "not a readable image" in str(err.value)
        victim.write_bytes(good)


def test_config_refuses_sets_of_other_notebooks_or_of_two_models(tmp_path):
    with pytest.raises(ParamError, match="nad_findpath or nad_subarch"):
        run.Config.from_params({"nad_params": "params/nad_hitrate.yaml"})
    other = tmp_path / "nad_findpath.other.yaml"
    other.write_text("model: small_resnet\n")
    with pytest.raises(ParamError, match="model 'small_vgg' differs"):
        run.Config.from_params({"nad_params": str(other)})
    with pytest.raises(ParamError, match="not found"):
        run.Config.from_params({"dissection_params": str(tmp_path / "dissection.none.yaml")})
    with pytest.raises(ParamError, match="not a layer of the dissection run"):
        run.Config.from_params({"layer": "features.conv5"})
    assert run.Config.from_params({}).layer == "features.conv6"


def _labels(units: int, detectors: int) -> pd.DataFrame:
    """Per-unit labels of a layer whose first `detectors` units are detectors."""
    return pd.DataFrame({"unit": range(units), "concept": "red-c", "category": "color", "iou": 0.1,
                         "detector": np.arange(units) < detectors})


def test_width_against_detectors_on_a_planted_table():
    """Five layers of 8 units with 1..5 detectors; the 'follows' LW-DNA keeps more width where there are more
    detectors (rho = +1), 'opposes' less (rho = -1), 'flat' the same everywhere (rho = 0)."""
    layers = [(f"l{i}", f"v{i}") for i in range(5)]
    labels = {f"l{i}": _labels(8, i + 1) for i in range(5)}
    widened = {f"v{i}": 16 for i in range(5)}
    kept = {"follows": {f"v{i}": 4 + 2 * i for i in range(5)}, "opposes": {f"v{i}": 12 - 2 * i for i in range(5)},
            "flat": {f"v{i}": 8 for i in range(5)}}
    table = run.width_detector_table(layers, labels, widened, kept)
    assert table["detectors"].tolist() == [1, 2, 3, 4, 5] and table["units"].tolist() == [8] * 5
    assert table["detector share"].tolist() == pytest.approx([i / 8 for i in range(1, 6)])
    assert table["kept share (follows)"].tolist() == pytest.approx([0.25, 0.375, 0.5, 0.625, 0.75])
    summary = run.width_detector_summary(table, ["follows", "opposes", "flat"]).set_index("score")
    assert summary["rho"].tolist() == pytest.approx([1.0, -1.0, 0.0])
    assert summary["verdict (rho > 0)"].tolist() == [stats.HELD, stats.NOT_HELD, stats.INCONCLUSIVE]
    assert summary.loc["follows", "permutation p"] == pytest.approx(2 / 120)   # identity and reverse of 5! orders
    assert summary.loc["flat", "permutation p"] == 1.0


def test_rank_correlation_is_spearman_with_a_wide_interval_for_few_layers():
    x, y = [0.1, 0.4, 0.2, 0.8, 0.5, 0.3], [0.3, 0.5, 0.1, 0.9, 0.2, 0.4]
    iv = method.rank_correlation(x, y)
    assert iv.mean == pytest.approx(scipy_spearman(x, y)) and iv.low < iv.mean < iv.high
    assert iv.verdict() == stats.INCONCLUSIVE  # rho 0.66 over 6 layers: the interval reaches below 0
    assert method.permutation_p(x, y) == pytest.approx(scipy_permutation_p(x, y))
    with pytest.raises(ParamError, match="at least 4 pairs"):
        method.rank_correlation([1, 2, 3], [1, 2, 3])


def scipy_spearman(x, y) -> float:
    return float(spearmanr(x, y).statistic)


def scipy_permutation_p(x, y) -> float:
    rho = abs(scipy_spearman(x, y))
    return float(np.mean([abs(scipy_spearman(x, list(p))) >= rho - 1e-12 for p in permutations(y)]))


def test_lens_layers_are_modules_of_the_baseline():
    arch = networks.architecture("cifar_resnet", 8, 1.0, 10, 16)
    layers = run.lens_layers(arch)
    assert layers == [("layer1.0.bn1", "layer1_0_1"), ("layer1.0", "stage1"), ("layer2.0.bn1", "layer2_0_1"),
                      ("layer2.0", "stage2"), ("layer3.0.bn1", "layer3_0_1"), ("layer3.0", "stage3")]
    net = networks.build_network(arch)
    for name, vector in layers:
        module = get_module(net, name)
        width = module.num_features if hasattr(module, "num_features") else module.conv2.out_channels
        assert width == arch.vectors[vector], name
    deeper = run.lens_layers(networks.architecture("cifar_resnet", 20, 1.0, 10, 16))
    assert [n for n, v in deeper if v == "stage2"] == ["layer2.2"] and len(deeper) == 12


def test_config_refuses_a_lens_set_of_another_notebook_or_on_real_data():
    with pytest.raises(ParamError, match="parameter set of heterogeneity"):
        run.Config.from_params({"hetero_params": "params/dka.yaml"})
    with pytest.raises(ParamError, match="trains on 'cifar10"):
        run.Config.from_params({"hetero_params": "params/heterogeneity.cifar10_resnet20.yaml"})
    assert run.Config.from_params({"hetero_params": None}).hetero is None


def test_smoke_set_runs_the_heterogeneity_lens():
    """The anatomy smoke set's lens (heterogeneity smoke set: ResNet-8, 1 epoch, first seed): the baseline's
    six layers dissected, each LW-DNA's kept share read from the cached search, and the summary per mode."""
    cfg = run.Config.from_params(run.read_set("params/anatomy.smoke.yaml", "anatomy"))
    lens = run.hetero_lens(cfg)
    assert lens.modes == ["magnitude", "gradient", "random"] and lens.seed == 0
    t = lens.table
    assert t["layer"].tolist() == [n for n, _ in run.lens_layers(networks.architecture("cifar_resnet", 8, 1.0, 10, 16))]
    assert t["units"].tolist() == [16, 16, 32, 32, 64, 64]
    assert ((t["detectors"] >= 0) & (t["detectors"] <= t["units"])).all()
    for m in lens.modes:
        assert ((t[f"kept share ({m})"] > 0) & (t[f"kept share ({m})"] <= 1)).all()
    summary = run.width_detector_summary(t, lens.modes)
    assert summary["rho"].between(-1, 1).all() and summary["layers"].eq(6).all()
