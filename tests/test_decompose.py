"""Tests of netanatomy.decompose (Decomposing the Deep, Badola, Roy, Padmanabhan and Lal 2021, and its CSG baseline)."""

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import mutual_info_score
from torch import nn

from helpers.data import CLASSES, cifar_jpeg_archive, cifar_npz
from helpers.decompose import (AKAMASTER, CIFAR_NPZ, CORRECT_OF_1000, CSG_CKPT, PUBLISHED, PUBLISHED_CSG,
                               RESNET50_INDICES, akamaster_like_checkpoint, block_indices, block_linear, cifar10_batches_folder,
                               cifar10_npz, needs, planted_features, random_checkpoint, random_linear,
                               tiny_imagefolder)
from netanatomy import cache, data, hooks, models, params, stats
from netanatomy.decompose import csg as dc
from netanatomy.decompose import figures as dfig
from netanatomy.decompose import files as dfiles
from netanatomy.decompose import method as dm
from netanatomy.decompose import run as dr
from netanatomy.decompose import tables as dt
from netanatomy.errors import DataError, ParamError

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- extraction
def test_extraction_recovers_planted_blocks():
    C, D, block = 4, 24, 3
    f, y = planted_features(C, D, block)
    idx, freq = dm.influential_indices(f, y, C, k=block, n=block)
    for c in range(C):
        assert idx[c] == block_indices(C, block)[c]
        # every image of class c has exactly its block as top-3
        assert freq[c, c * block:(c + 1) * block].tolist() == [30, 30, 30]
        assert freq[c].sum() == 30 * block
    assert freq.shape == (C, D)


def test_tie_breaks_are_lower_index_first():
    f = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 2.0, 2.0, 2.0]])
    assert dm.topk_per_image(f, 2).tolist() == [[0, 1], [1, 2]]
    freq = np.array([[3, 5, 5, 1], [2, 2, 2, 2]])
    assert dm.most_frequent(freq, 2) == {0: [1, 2], 1: [0, 1]}


def test_wrong_k_or_n_is_a_param_error():
    f, y = planted_features()
    for k, n in ((0, 3), (3, 0), (3, 25), (25, 3)):
        with pytest.raises(ParamError):
            dm.influential_indices(f, y, 4, k=k, n=n)


# ---------------------------------------------------------------------------- decomposed head
def test_decomposed_head_with_all_indices_equalsrandom_linear():
    lin = random_linear()
    C, D = lin.weight.shape
    head = dm.DecomposedHead.from_linear(lin, {c: list(range(D)) for c in range(C)})
    f = torch.randn(7, D)
    assert torch.allclose(head(f), lin(f), atol=1e-5)


def test_decomposed_head_equals_masked_linear_shape_and_row_init():
    lin = random_linear()
    C, D = lin.weight.shape
    rng = np.random.default_rng(1)
    idx = {c: rng.choice(D, size=3, replace=False).tolist() for c in range(C)}
    head = dm.DecomposedHead.from_linear(lin, idx)
    f = torch.randn(6, D)
    out = head(f)
    assert out.shape == (6, C)  # upstream returned (B, 1, C)
    Wm = dm.masked_weight(lin.weight.detach(), idx)
    assert torch.allclose(out, f @ Wm.T + lin.bias.detach(), atol=1e-5)
    # row c holds W[c, S_c], not class 0's weights (the gather mistake the seed describes)
    for c in range(C):
        assert torch.equal(head.weight[c].detach(), lin.weight[c, idx[c]].detach())
    assert not torch.equal(head.weight[1], lin.weight[0, idx[1]].detach())
    assert torch.equal(head.dense_weight().detach(), Wm)
    assert torch.equal(head.bias.detach(), lin.bias.detach())


def test_decompose_replaces_head_of_a_model_and_leaves_original():
    model = models.build("resnet20", 10).eval()
    idx = {c: [c, c + 1, 63 - c] for c in range(10)}
    dec = dm.decompose(model, idx).eval()
    x = torch.randn(2, 3, 32, 32)
    f, z = models.pooled_features(model, x)
    assert isinstance(models.head(model)[1], nn.Linear)
    assert isinstance(models.head(dec)[1], dm.DecomposedHead)
    expected = f @ dm.masked_weight(model.linear.weight.detach(), idx).T + model.linear.bias
    assert torch.allclose(dec(x), expected, atol=1e-5)
    assert dm.DecomposedHead.from_linear(model.linear, idx).weight.numel() == 30


# ---------------------------------------------------------------------------- index files
def test_index_json_round_trip_and_layout(tmp_path):
    idx = {0: [7, 23, 54], 1: [9, 47, 40], 2: [1, 0, 13]}
    path = dfiles.write_indices(idx, tmp_path / "idx.json")
    raw = json.loads(path.read_text())
    assert raw == {"0": [7, 23, 54], "1": [9, 47, 40], "2": [1, 0, 13]}
    assert dfiles.read_indices(path, 3, 64) == idx


@pytest.mark.parametrize("content, msg", [
    ({"0": [1, 2], "1": [3, 4]}, "classes"),          # 2 classes for a 3-class model
    ({"0": [1, 2], "1": [3, 4], "2": [5, 99]}, "outside"),
    ({"0": [1, 1], "1": [3, 4], "2": [5, 6]}, "twice"),
    ({"0": [1, 2], "1": [3], "2": [5, 6]}, "different"),
])
def test_index_file_that_does_not_fit_is_one_clear_error(tmp_path, content, msg):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=msg):
        dfiles.read_indices(path, num_classes=3, num_features=64)
    with pytest.raises(DataError, match="not found"):
        dfiles.read_indices(tmp_path / "nope.json", 3, 64)


# ---------------------------------------------------------------------------- mutual information
def test_mutual_information_matches_sklearn_and_orders_disjoint_below_shared():
    D = 64
    disjoint = {c: list(range(5 * c, 5 * c + 5)) for c in range(10)}
    shared = {c: [0, 1, 2, 3, 10 + c] for c in range(10)}
    for idx in (disjoint, shared):
        X = dm.indicator_matrix(idx, D)
        M = dm.pairwise_mutual_information(idx, D)
        assert M[2, 5] == pytest.approx(mutual_info_score(X[2], X[5]), abs=1e-12)
        assert dm.mean_mutual_information(idx, D, True) == pytest.approx(
            np.mean([mutual_info_score(X[i], X[j]) for i in range(10) for j in range(10)]), abs=1e-12)
    for self_pairs in (True, False):
        assert dm.mean_mutual_information(disjoint, D, self_pairs) < dm.mean_mutual_information(shared, D, self_pairs)
    assert dm.mean_mutual_information(disjoint, D, False) < dm.mean_mutual_information(disjoint, D, True)


def test_published_mi_numbers_reproduce():
    needs(PUBLISHED, PUBLISHED_CSG)
    ours = dfiles.read_indices(PUBLISHED, 10, 64)
    csg = dfiles.read_indices(PUBLISHED_CSG, 10, 64)
    assert dm.mean_mutual_information(ours, 64) == pytest.approx(dm.PUBLISHED["MI ours (k=5)"], abs=1e-12)
    assert dm.mean_mutual_information(csg, 64) == pytest.approx(dm.PUBLISHED["MI CSG (k=5)"], abs=1e-12)
    assert round(dm.PUBLISHED["MI ours (k=5)"], 6) == 0.034538 and round(dm.PUBLISHED["MI CSG (k=5)"], 6) == 0.037509


# ---------------------------------------------------------------------------- essentiality
def test_noise_is_seeded_and_hits_only_the_chosen_features():
    f, y = planted_features()
    idx = {c: [3 * c, 3 * c + 1, 3 * c + 2] for c in range(4)}
    a = dm.perturb(f, y, idx, "influential", seed=3)
    b = dm.perturb(f, y, idx, "influential", seed=3)
    c = dm.perturb(f, y, idx, "influential", seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    mask = torch.as_tensor(dm.indicator_matrix(idx, f.shape[1]), dtype=torch.bool)[y]
    assert torch.equal(a[~mask], f[~mask]) and not torch.equal(a[mask], f[mask])
    nb = dm.perturb(f, y, idx, "non_influential", seed=3)
    assert torch.equal(nb[mask], f[mask]) and not torch.equal(nb[~mask], f[~mask])
    add = dm.perturb(f, y, idx, "influential", mode="additive", scale=0.0, seed=3)
    assert torch.equal(add, f)


def test_essentiality_on_planted_features():
    C, D = 4, 24
    f, y = planted_features(C, D)
    lin = block_linear(C, D)  # reads only each class's block
    feats = dm.Features(f, f @ lin.weight.T, y)
    table = dt.essentiality_table({"planted": (feats, lin, block_indices(C))}, seed=0)
    s = dt.essentiality_summary(table)
    assert s.loc[("planted", "non-influential"), "clean acc (%)"] == 100
    assert s.loc[("planted", "non-influential"), "acc with noise (%)"] > 90
    assert s.loc[("planted", "influential"), "acc with noise (%)"] < 60
    assert (table["images"] == 30).all()


# ---------------------------------------------------------------------------- CSG
def test_gate_selection_largest_versus_smallest():
    G = torch.tensor([[0.9, 0.1, 0.5, 0.0, 0.7], [0.2, 0.8, 0.8, 0.3, 0.05]])
    assert dc.csg_indices(G, 2) == {0: [0, 4], 1: [1, 2]}
    assert dc.csg_indices(G, 2, select="smallest") == {0: [3, 1], 1: [4, 0]}
    with pytest.raises(ParamError):
        dc.csg_indices(G, 6)


def test_csg_gating_pooled_features_equals_gating_last_layer():
    model = models.build("small_resnet", 5, width_mult=0.25).eval()
    net = dc.CSGNet(model)
    net.set_gates(torch.rand(5, net.gates.shape[1]))
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 3, 4])
    f, _ = models.pooled_features(model, x)
    via_features = net.gated_logits(f, y)
    with hooks.channel_gates(model, {"layer3": net.gates[y].detach()}):
        via_maps = model(x)
    assert torch.allclose(via_features, via_maps, atol=1e-5)


def test_csg_loss_has_sparsity_and_gates_receive_gradients():
    model = models.build("small_resnet", 4, width_mult=0.25)
    net = dc.CSGNet(model)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    loss0, logits = dc.csg_loss(0.0, 0.0)(net, x, y)
    loss1, _ = dc.csg_loss(0.0, 0.5)(net, x, y)
    C, D = net.gates.shape
    assert logits.shape == (4, 4)
    assert loss1.item() == pytest.approx(loss0.item() + 0.5 * C * D, rel=1e-4)  # gates start at 1
    loss2, _ = dc.csg_loss(1.0, 0.1)(net, x, y)
    loss2.backward()
    assert net.gate_param.grad is not None and net.gate_param.grad.abs().sum() > 0
    fast = dc.CSGNet(models.build("small_resnet", 4, width_mult=0.25), gate_scale=10.0)
    assert torch.allclose(fast.gates, torch.ones(4, D)) and torch.allclose(fast.gate_param, torch.full((4, D), 0.1))


def test_legacy_smallest_gates_reproduce_published_csg_indices():
    needs(CSG_CKPT, PUBLISHED_CSG)
    net = dfiles.load_csg_checkpoint(CSG_CKPT)
    assert tuple(net.gates.shape) == (10, 64)
    assert dc.csg_indices(net.gates, 5, select="smallest") == dfiles.read_indices(PUBLISHED_CSG, 10, 64)
    assert dc.csg_indices(net.gates, 5) != dfiles.read_indices(PUBLISHED_CSG, 10, 64)


# ---------------------------------------------------------------------------- real checkpoint
def test_akamaster_checkpoint_and_published_indices_on_cifar_subset():
    needs(AKAMASTER, CIFAR_NPZ, PUBLISHED)
    d = np.load(CIFAR_NPZ)
    mean, std = data.normalization("imagenet")
    x = (torch.tensor(d["images"][:200]).float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    y = torch.tensor(d["labels"][:200])
    model = models.load_weights(models.build("resnet20", 10), AKAMASTER).eval()
    f, z = models.pooled_features(model, x)
    assert f.shape == (200, 64)
    acc = (z.argmax(1) == y).float().mean().item()
    assert 0.85 <= acc <= 0.97
    dec = dm.decompose(model, dfiles.read_indices(PUBLISHED, 10, 64)).eval()
    acc_dec = (dec(x).argmax(1) == y).float().mean().item()
    assert 0.75 <= acc_dec < acc + 0.02


def test_missing_checkpoint_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        models.load_weights(models.build("resnet20", 10), tmp_path / "missing.th")
    with pytest.raises(DataError, match="not found"):
        dfiles.load_csg_checkpoint(tmp_path / "missing.pth")


# ---------------------------------------------------------------------------- setup on CIFAR-10 layouts
COMMON = dict(model="resnet20", dataset="cifar10", k=3, n=2, k_grid=[3], n_grid=[2], progress=False, device="cpu")


def test_setup_reads_a_cifar10_batches_folder_and_an_npz_subset(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "cache"))
    folder = cifar10_batches_folder(tmp_path)
    weights = str(akamaster_like_checkpoint(tmp_path / "r20.th"))
    S = dr.setup(dr.Config(data_root=str(folder), weights=weights, **COMMON))
    assert S.fit_label == "CIFAR-10 train (20 images)" and S.eval_label == "CIFAR-10 test (20 images)"
    assert S.feats_fit.features.shape == (20, 64) and S.classes[3] == "c3"
    assert S.all_label is None

    npz = cifar10_npz(tmp_path / "sub.npz", 40)
    S = dr.setup(dr.Config(data_root=str(npz), weights=weights, **COMMON))
    assert S.fit_label.startswith("CIFAR-10 test[0:40] fit part (20") and "eval part (20" in S.eval_label
    assert sorted(np.bincount(S.feats_eval.labels.numpy()).tolist()) == [2] * 10  # stratified
    acc = dt.accuracy_table(S, {"x": {c: [c, c + 1] for c in range(10)}})
    assert "acc (%) CIFAR-10 test[0:40] all (40 images)" in acc.columns and dr.SEED_COLUMN in acc.columns
    assert acc[dr.SEED_COLUMN].tolist() == [dm.SEED_REFERENCE["original"], "-"]  # n = 2 has no seed number
    ok = (S.feats_eval.logits.argmax(1) == S.feats_eval.labels).float().numpy()
    iv = stats.mean_interval(100 * ok)
    assert acc["95% interval, eval images"][0] == f"[{iv.low:.1f}, {iv.high:.1f}]"


def test_features_finetuning_and_csg_are_cached_and_reload_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "cache"))
    npz = cifar10_npz(tmp_path / "sub.npz", 40)
    weights = str(akamaster_like_checkpoint(tmp_path / "r20.th"))
    cfg = dr.Config(data_root=str(npz), weights=weights, finetune_epochs=1, csg_epochs=1, batch_size=8, **COMMON)
    S = dr.setup(cfg)
    idx = {c: [c, c + 1] for c in range(10)}
    net, table = dr.finetuned(S, idx, cfg)
    csg = dr.csg_baseline(S, cfg)
    cached = {p.parent.name for p in (tmp_path / "cache" / "decompose").rglob("*.pt")}
    assert cached == {"features", "finetune", "csg"}
    assert list(table["epoch"]) == [0, 1]
    again = dr.setup(cfg)  # everything below now loads from the cache
    assert torch.equal(again.feats_eval.features, S.feats_eval.features)
    net2, table2 = dr.finetuned(again, idx, cfg)
    assert table2.equals(table)
    assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    csg2 = dr.csg_baseline(again, cfg)
    assert torch.equal(csg2.net.gates.cpu(), csg.net.gates.cpu()) and csg2.history.equals(csg.history)
    assert not torch.equal(csg.net.gates.cpu(), torch.ones_like(csg.net.gates.cpu()))  # the gates were trained


def test_config_from_params_refuses_unknown_names_and_reads_published_keys(tmp_path):
    with pytest.raises(ParamError) as err:
        dr.Config.from_params({"k": 5, "nn": 3})
    assert err.value.param == "nn"
    a, b = (dfiles.write_indices({0: [1]}, tmp_path / name) for name in ("a.json", "b.json"))
    cfg = dr.Config.from_params({"published_indices": {"5": str(a), 10: str(b)}})
    assert cfg.published_indices == {5: str(a), 10: str(b)}
    with pytest.raises(ParamError) as err:
        dr.Config(dataset="cifar10")  # real data needs weights
    assert err.value.param == "weights"
    assert not dr.Config(csg_epochs=0).csg  # no checkpoint and nothing to train: no CSG baseline
    assert dr.Config(csg_epochs=0, csg_checkpoint=str(a)).csg and dr.Config().csg


@pytest.mark.parametrize("field, value", [("n", 0), ("k", 0), ("noise", "pink"), ("fit_fraction", 1.0),
                                          ("normalize", "weird"), ("max_train_images", 0), ("k_grid", [5, 0]),
                                          ("lr", 0.0), ("lr", "1e-4"), ("model", "resnet21"),
                                          ("published_indices", {"x": "a"}), ("n_random", 1), ("n_random", 0),
                                          ("k", 129), ("n", 200), ("k_grid", [5, 129]), ("n_grid", [300]),
                                          ("published_indices", {"129": "a.json"}), ("csg_epochs", -1),
                                          ("seed", -1), ("mi_self_pairs", "yes"), ("fit_per_class", 0),
                                          ("train_per_class", 1.5), ("eval_dataset", "mnist")])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ParamError) as err:
        dr.Config(**{field: value})
    assert err.value.param == field


def test_n_above_feature_count_is_rejected_at_setup_level():
    f, y = planted_features(D=24)
    with pytest.raises(ParamError, match="D = 24"):
        dm.influential_indices(f, y, 4, k=3, n=25)
    with pytest.raises(DataError, match="outside"):
        dm.DecomposedHead.from_linear(random_linear(C=3, D=12), {0: [1], 1: [2], 2: [12]})


def test_config_defaults_are_the_notebooks_defaults():
    assert dr.Config.from_params(params.with_defaults("decomposition", {})) == dr.Config()


# ---------------------------------------------------------------------------- mutual information, vectorised
def test_pairwise_mutual_information_equals_sklearn_on_random_and_edge_sets():
    rng = np.random.default_rng(3)
    D = 20
    for n in (1, 4, 10, 19, 20):  # n = D: every indicator is constant, MI 0
        idx = {c: sorted(rng.choice(D, n, replace=False).tolist()) for c in range(6)}
        X = dm.indicator_matrix(idx, D)
        brute = np.array([[mutual_info_score(X[i], X[j]) for j in range(6)] for i in range(6)])
        assert np.allclose(dm.pairwise_mutual_information(idx, D), brute, atol=1e-12, rtol=0)
    assert np.all(dm.pairwise_mutual_information({c: list(range(D)) for c in range(3)}, D) == 0)


# ---------------------------------------------------------------------------- random controls
def test_random_index_sets_are_seeded_distinct_and_uniform():
    a = dm.random_index_sets(5, 30, 4, (0, 1))
    assert a == dm.random_index_sets(5, 30, 4, (0, 1)) and a != dm.random_index_sets(5, 30, 4, (0, 2))
    assert all(len(set(v)) == 4 and 0 <= min(v) and max(v) < 30 for v in a.values())
    counts = np.zeros(30)
    for r in range(2000):
        for v in dm.random_index_sets(2, 30, 4, (7, r)).values():
            counts[v] += 1
    expected = 2000 * 2 * 4 / 30  # 533.3 per feature; binomial sd about 21.5
    assert np.abs(counts - expected).max() < 6 * 21.5
    assert dm.random_index_sets(3, 6, 6, 0) == {c: list(range(6)) for c in range(3)}
    with pytest.raises(ParamError):
        dm.random_index_sets(3, 6, 7, 0)


def _planted_run(sets=None):
    C, D = 4, 24
    f, y = planted_features(C, D)
    lin = block_linear(C, D)
    return dm.Features(f, f @ lin.weight.T, y), lin, sets or block_indices(C)


def test_controls_hold_on_planted_truth_and_match_a_brute_force_oracle():
    feats, lin, sets = _planted_run()
    cfg = dr.Config(n_random=20, seed=1)
    table = dt.control_study({"planted": (feats, lin, sets)}, cfg).set_index("claim")
    for claim in dt.COMPARISONS:
        assert table.loc[claim, "verdict"] == stats.HELD, claim
    # the oracle: every draw recomputed by hand, the paired interval over the 120 images
    own = dm.correct(feats, dm.DecomposedHead.from_linear(lin, sets)).float()
    rand = torch.stack([dm.correct(feats, dm.DecomposedHead.from_linear(lin, dm.random_index_sets(4, 24, 3, (1, r))))
                        .float() for r in range(20)]).mean(0)
    iv = stats.paired_interval(100 * own.numpy(), 100 * rand.numpy())
    row = table.loc["decomposed head beats random sets of the same size"]
    assert (row["difference"], row["95% low"], row["95% high"]) == pytest.approx((iv.mean, iv.low, iv.high), abs=1e-9)
    assert row["A mean"] == 100.0 and row["unit"] == "120 images"
    # noise: the same seeds through perturb give the same outcomes
    at_sets = torch.stack([dm.noisy_correct(feats, lin, sets, seed=10_000 + r).float() for r in range(20)]).mean(0)
    others = torch.stack([dm.noisy_correct(feats, lin, sets, "non_influential", seed=10_000 + r).float()
                          for r in range(20)]).mean(0)
    iv = stats.paired_interval(100 * others.numpy(), 100 * at_sets.numpy())
    row = table.loc["noise at the n set features costs more than noise at the D - n others"]
    assert (row["difference"], row["95% low"], row["95% high"]) == pytest.approx((iv.mean, iv.low, iv.high), abs=1e-9)
    # MI over the 6 distinct class pairs: random sets' pairwise MI averaged over the same 20 draws
    M = np.mean([dm.pairwise_mutual_information(dm.random_index_sets(4, 24, 3, (1, r)), 24) for r in range(20)], 0)
    pairs = np.triu_indices(4, 1)
    iv = stats.mean_interval(M[pairs] - dm.pairwise_mutual_information(sets, 24)[pairs])
    row = table.loc[dt.MI_CLAIM]
    assert row["unit"] == "6 class pairs" and row["difference"] == pytest.approx(iv.mean, abs=1e-12)
    assert row["95% low"] == pytest.approx(iv.low, abs=1e-12)


def test_controls_say_did_not_hold_for_sets_the_model_does_not_use():
    feats, lin, _ = _planted_run()
    unused = {c: [21, 22, 23] for c in range(4)}  # block_linear gives these features weight 0
    table = dt.control_study({"unused": (feats, lin, unused)}, dr.Config(n_random=20)).set_index("claim")
    decomposed = table.loc["decomposed head beats random sets of the same size"]
    assert decomposed["A mean"] == 25.0  # all logits 0: argmax picks class 0, right for a quarter of the images
    assert decomposed["verdict"] == stats.NOT_HELD and decomposed["95% high"] < 0
    assert table.loc["noise at the sets costs more than noise at random sets of the same size", "verdict"] == stats.NOT_HELD


# ---------------------------------------------------------------------------- parameters checked up front
def test_missing_files_are_named_by_their_parameter_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "cache"))
    weights = str(akamaster_like_checkpoint(tmp_path / "r20.th"))
    base = dict(model="resnet20", dataset="cifar10", weights=weights, data_root=str(cifar10_npz(tmp_path / "a.npz")))
    for field, value in (("data_root", str(tmp_path / "missing.npz")), ("weights", str(tmp_path / "missing.th")),
                         ("published_indices", {5: str(tmp_path / "missing.json")}),
                         ("csg_checkpoint", str(tmp_path / "missing.pth")),
                         ("csg_index_file", str(tmp_path / "missing_csg.json"))):
        with pytest.raises(DataError) as err:
            dr.Config(**(base | {field: value}))
        assert f"parameter '{field}'" in str(err.value) and "missing" in err.value.path
        assert "test images only" not in str(err.value)
    with pytest.raises(ParamError) as err:
        dr.Config(**(base | {"data_root": None}))
    assert err.value.param == "data_root"
    assert not (tmp_path / "cache").exists()  # nothing was computed


def test_published_file_must_hold_the_n_it_is_named_for(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "cache"))
    wrong = dfiles.write_indices({c: [c, c + 1, c + 2] for c in range(10)}, tmp_path / "three.json")
    cfg = dr.Config(model="resnet20", dataset="cifar10", data_root=str(cifar10_npz(tmp_path / "a.npz")),
                    weights=str(akamaster_like_checkpoint(tmp_path / "r20.th")), k=3, n=2, k_grid=[3], n_grid=[2],
                    published_indices={5: str(wrong)}, progress=False, device="cpu")
    with pytest.raises(DataError, match="3 indices per class, but published_indices names it for n = 5"):
        dr.read_published(cfg, dr.setup(cfg))


# ---------------------------------------------------------------------------- damaged cache files
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def test_damaged_features_finetuning_and_csg_files_are_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "cache"))
    cfg = dr.Config(data_root=str(cifar10_npz(tmp_path / "sub.npz", 40)), finetune_epochs=1, csg_epochs=1,
                    batch_size=8, weights=str(akamaster_like_checkpoint(tmp_path / "r20.th")), **COMMON)
    idx = {c: [c, c + 1] for c in range(10)}
    S = dr.setup(cfg)
    _, table = dr.finetuned(S, idx, cfg)
    csg = dr.csg_baseline(S, cfg)
    folder = tmp_path / "cache" / "decompose"
    for part in ("features", "finetune", "csg"):
        for path in (folder / part).glob("*.pt"):
            _truncate(path)
    (folder / "features" / "junk.pt").write_bytes(b"")  # an unrelated file stays untouched
    with pytest.warns(cache.CacheWarning) as caught:
        again = dr.setup(cfg)
        _, table2 = dr.finetuned(again, idx, cfg)
        csg2 = dr.csg_baseline(again, cfg)
    named = " ".join(str(w.message) for w in caught)
    assert named.count("damaged cache file") >= 5 and "finetune-" in named and "csg-" in named
    assert torch.equal(again.feats_eval.features, S.feats_eval.features)
    assert table2.equals(table) and torch.equal(csg2.net.gates.cpu(), csg.net.gates.cpu())
    assert len(list(folder.rglob("*.damaged"))) >= 5
    with warnings.catch_warnings():
        warnings.simplefilter("error", cache.CacheWarning)  # everything is whole again
        dr.setup(cfg)


def test_a_cache_file_lacking_its_parts_is_damaged(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "cache"))
    cfg = dr.Config(data_root=str(cifar10_npz(tmp_path / "sub.npz", 40)),
                    weights=str(akamaster_like_checkpoint(tmp_path / "r20.th")), **COMMON)
    S = dr.setup(cfg)
    path = next((tmp_path / "cache" / "decompose" / "features").glob("eval-*.pt"))
    torch.save({"features": torch.zeros(1)}, path)  # readable, but not our result
    with pytest.warns(cache.CacheWarning, match="lacks logits, labels"):
        assert torch.equal(dr.setup(cfg).feats_eval.features, S.feats_eval.features)


def test_damaged_training_checkpoint_starts_over(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "cache"))
    cfg = dr.Config(data_root=str(cifar10_npz(tmp_path / "sub.npz", 40)), finetune_epochs=1, batch_size=8,
                    weights=str(akamaster_like_checkpoint(tmp_path / "r20.th")), **COMMON)
    idx = {c: [c, c + 1] for c in range(10)}
    S = dr.setup(cfg)
    _, table = dr.finetuned(S, idx, cfg)
    result = next((tmp_path / "cache" / "decompose" / "finetune").glob("finetune-*.pt"))
    result.unlink()
    cache.checkpoint_of(result).path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.warns(cache.CacheWarning, match=r"\.ckpt\.pt: damaged"):
        _, again = dr.finetuned(S, idx, cfg)
    assert again.equals(table) and not cache.checkpoint_of(result).path.exists()


# ---------------------------------------------------------------------------- the ImageNet ResNet-50 parameter set
def test_imagenet_resnet50_set_on_random_weights_and_a_tiny_imagefolder(tmp_path, monkeypatch):
    """params/decomposition.imagenet_resnet50.yaml with the user's paths replaced by a random torchvision
    ResNet-50 (1000 classes) and an ImageFolder with 1000 class folders (4 of them hold images)."""
    needs(RESNET50_INDICES)
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "cache"))
    given = yaml.safe_load((ROOT / "params" / "decomposition.imagenet_resnet50.yaml").read_text())
    assert given["lr"] == 1e-5 and given["k_grid"] == list(range(10, 101, 10)) and given["n"] == 50
    assert params.with_defaults("decomposition", given)  # every name is a notebook parameter
    with pytest.raises(DataError, match="parameter 'weights'"):  # the placeholders name what to supply
        dr.Config.from_params(given)
    root = tiny_imagefolder(tmp_path / "imagenet")
    cfg = dr.Config.from_params(given | {"weights": str(random_checkpoint("resnet50", 1000, tmp_path / "r50.pth")),
                                         "data_root": str(root), "k_grid": [10, 100], "n_random": 2,
                                         "max_train_images": 2,  # finetune ResNet-50 on two images only
                                         "device": "cpu", "progress": False})
    assert not cfg.csg and dr.feature_count("resnet50") == 2048
    S = dr.setup(cfg)
    assert len(S.classes) == 1000 and S.feats_fit.features.shape == (8, 2048) and S.feats_eval.features.shape == (4, 2048)
    published = dr.read_published(cfg, S)
    assert sorted(published) == [50] and all(len(v) == 50 for v in published[50].values())
    ours, _ = dm.influential_indices(S.feats_fit.features, S.feats_fit.labels, 1000, cfg.k, cfg.n)
    acc = dt.accuracy_table(S, dt.named_index_sets(ours, published, cfg))
    assert acc["head weights"].tolist() == [2_048_000, 50_000, 50_000]
    assert dt.k_sweep(S, cfg).shape == (2, 3)
    _, ft = dr.finetuned(S, ours, cfg)
    assert ft["epoch"].tolist() == [0, 1]
    assert dr.csg_baseline(S, cfg) is None and dr.csg_index_sets(None, S, cfg) == {}
    runs = dt.index_runs(S, None, ours, published, {}, cfg)
    controls = dt.control_study(runs, cfg)
    assert set(controls["indices"]) == {"ours (k=50, n=50)", "published (n=50)"} and len(controls) == 8
    mi = dt.mi_over_n(S, None, cfg, published)
    assert set(mi["indices"]) == {"ours (k=50, n=50)", "published ours (n=50)"}


# ---------------------------------------------------------------------------- upstream's protocol: training images
def _jpeg_setup(tmp_path, **extra):
    """A 3-class JPEG archive (4 training, 2 test images per class), evaluation on a 3-class npz (2 per class)."""
    archive, npz = tmp_path / "mini.tar.gz", cifar_npz(tmp_path / "eval.npz", 2)
    cifar_jpeg_archive(archive, {"train": 4, "test": 2})
    return dict(model="resnet20", dataset="cifar10_jpeg", data_root=str(archive), eval_dataset="cifar10",
                eval_root=str(npz), weights=str(random_checkpoint("resnet20", 3, tmp_path / "r20.th")), k=3, n=2,
                k_grid=[3], n_grid=[2], progress=False, device="cpu") | extra


def test_indices_from_the_first_training_images_per_class_and_eval_on_another_source(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "cache"))
    cfg = dr.Config(**_jpeg_setup(tmp_path, fit_per_class=3, train_per_class=1))
    S = dr.setup(cfg)
    assert S.classes == list(CLASSES)
    assert S.fit_label == "CIFAR-10 (JPEG) train (9 images)" and S.train_label == "CIFAR-10 (JPEG) train (3 images)"
    assert S.eval_label == "CIFAR-10 test[0:6] (6 images)" and S.all_label is None
    assert S.fit_ds.indices == [0, 1, 2, 4, 5, 6, 8, 9, 10] and S.train_ds.indices == [0, 4, 8]
    assert S.feats_fit.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and S.feats_eval.labels.tolist() == [0, 0, 1, 1, 2, 2]
    eval_npz = np.load(tmp_path / "eval.npz")
    model = models.load_weights(models.build("resnet20", 3), tmp_path / "r20.th").eval()
    x = (torch.tensor(eval_npz["images"]).float() / 255 - torch.tensor(data.normalization("imagenet")[0])[:, None, None]) \
        / torch.tensor(data.normalization("imagenet")[1])[:, None, None]
    assert torch.allclose(S.feats_eval.features, models.pooled_features(model, x)[0].flatten(1), atol=1e-5)
    with pytest.raises(ParamError) as err:  # a class has 4 training images
        dr.setup(dr.Config(**_jpeg_setup(tmp_path, fit_per_class=5)))
    assert err.value.param == "fit_per_class" and "at most 4" in str(err.value)


def test_per_class_counts_and_the_eval_source_are_checked_up_front(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "cache"))
    given = _jpeg_setup(tmp_path)
    with pytest.raises(ParamError) as err:
        dr.Config(**(given | {"eval_root": None}))
    assert err.value.param == "eval_root"
    with pytest.raises(DataError, match="parameter 'eval_root'"):
        dr.Config(**(given | {"eval_root": str(tmp_path / "missing.npz")}))
    npz_only = dict(given, dataset="cifar10", data_root=given["eval_root"], eval_dataset=None, eval_root=None)
    with pytest.raises(ParamError) as err:  # the npz holds test images only: per-class counts of training images are refused
        dr.setup(dr.Config(**(npz_only | {"train_per_class": 1})))
    assert err.value.param == "train_per_class"
    assert not (tmp_path / "cache" / "decompose").exists()  # nothing was computed


def test_overlap_with_published_sets_against_chance():
    C, D, n = 4, 24, 3
    f, y = planted_features(C, D)
    feats = dm.Features(f, f[:, :C], y)
    S = SimpleNamespace(feats_fit=feats, feats_eval=feats, fit_label="fit", eval_label="eval",
                        classes=[str(c) for c in range(C)], num_features=D)
    cfg = dr.Config(k=3, n=3)
    same = dt.overlap_table(S, {n: block_indices(C)}, cfg).iloc[0]
    assert (same["shared"], same["of"], same["mean jaccard"]) == (C * n, C * n, 1.0)
    assert same["chance"] == C * n * n / D and same["excess per class"] == pytest.approx(n - n * n / D, abs=0.005)
    assert same["verdict"] == stats.HELD  # identical sets: no spread, interval is the point itself
    disjoint = {c: [(c * 3 + 12 + j) % D for j in range(n)] for c in range(C)}  # no class's block
    other = dt.overlap_table(S, {n: disjoint}, cfg).iloc[0]
    assert other["shared"] == 0 and other["verdict"] == stats.NOT_HELD
    both = dt.overlap_table(S, {n: block_indices(C)}, dr.Config(k=5, n=3))
    assert both["our k"].tolist() == [3, 5, 3]  # k = n (upstream's file names) and the run's k; eval part: k = n
    assert both["extracted on"].tolist() == ["fit", "fit", "eval"] and both["shared"].tolist() == [C * n] * 3


def _shared_paths(given: dict) -> list[Path]:
    values = [v for value in given.values() for v in (value.values() if isinstance(value, dict) else [value])]
    return [ROOT / v for v in values if isinstance(v, str) and "shared/" in v]


CIFAR_SETS = sorted(p.name for p in (ROOT / "params").glob("decomposition.cifar10_*.yaml"))
#: A few images: 3 training images per class for the indices, 1 per class for one finetuning epoch.
FEW = dict(fit_per_class=3, train_per_class=1, finetune_epochs=1, k_grid=[5], n_grid=[5], n_random=3, device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("set_file", CIFAR_SETS)
def test_cifar10_parameter_set_on_a_few_training_images(set_file):
    """Each CIFAR-10 set with FEW overriding its sizes: the published checkpoint's exact count on
    CIFAR-10 test[0:1000] (original pixels), the published files read and (ResNet-20) upstream's MI
    reproduced exactly from them; every table of the notebook built."""
    given = yaml.safe_load((ROOT / "params" / set_file).read_text())
    needs(*_shared_paths(given))
    assert given["dataset"] == "cifar10_jpeg" and given["eval_dataset"] == "cifar10"
    cfg = dr.Config.from_params(params.with_defaults("decomposition", given | FEW))
    S = dr.setup(cfg)
    assert S.fit_label == "CIFAR-10 (JPEG) train (30 images)" and S.eval_label == "CIFAR-10 test[0:1000] (1000 images)"
    assert round(1000 * S.feats_eval.accuracy()) == CORRECT_OF_1000[cfg.model]
    published = dr.read_published(cfg, S)
    ours, _ = dm.influential_indices(S.feats_fit.features, S.feats_fit.labels, 10, cfg.k, cfg.n)
    overlaps = dt.overlap_table(S, published, cfg)
    assert len(overlaps) == sum(len({m, cfg.k}) + 1 for m in published)
    assert len(dt.accuracy_table(S, dt.named_index_sets(ours, published, cfg))) == 2 + len(published)
    _, ft = dr.finetuned(S, ours, cfg)
    assert ft["epoch"].tolist() == [0, 1]
    csg = dr.csg_baseline(S, cfg)
    csg_sets = dr.csg_index_sets(csg, S, cfg)
    controls = dt.control_study(dt.index_runs(S, csg, ours, published, csg_sets, cfg), cfg)
    assert set(controls["verdict"]) <= {stats.HELD, stats.NOT_HELD, stats.INCONCLUSIVE}
    mi = dt.mi_over_n(S, csg, cfg, published, csg_sets.get("CSG published file"))
    legacy = dfig.describe_legacy_mi(mi)
    if cfg.model == "resnet20":
        assert S.reference and csg is not None and sorted(published) == [5, 10, 20]
        assert "ours **0.034538** (upstream 0.034538) vs CSG **0.037509** (upstream 0.037509)" in legacy[0]
    else:  # no published indices or CSG checkpoint exist for ResNet-56
        assert not published and csg is None and not legacy
