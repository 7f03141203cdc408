"""Tests of netanatomy.decompose (Decomposing the Deep, Badola et al. 2021, and its CSG baseline)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from netanatomy import decompose as dd
from netanatomy import hooks, models
from netanatomy.errors import DataError, ParamError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AKAMASTER = SHARED / "weights" / "resnet20-12fca82f.th"
CIFAR_NPZ = SHARED / "cifar10" / "cifar10_test_first1000.npz"
PUBLISHED = SHARED / "decomposition" / "resnet20_cifar-10_indices.json"
PUBLISHED_CSG = SHARED / "decomposition" / "resnet20_cifar-10_csg_indices.json"
CSG_CKPT = SHARED / "decomposition" / "best_save_CSG.pth"


def needs(*paths):
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"shared real-data files absent: {', '.join(missing)} (see ../shared/data/README.md)")


def planted_features(C=4, D=24, block=3, per_class=30, seed=0):
    """Class c's mass sits on features [c*block, (c+1)*block) (descending strengths), the rest is small noise."""
    g = torch.Generator().manual_seed(seed)
    f = 0.1 * torch.rand(C * per_class, D, generator=g)
    labels = torch.arange(C).repeat_interleave(per_class)
    for c in range(C):
        rows = labels == c
        for r, j in enumerate(range(c * block, (c + 1) * block)):
            f[rows, j] = 5.0 - r + 0.1 * torch.rand(int(rows.sum()), generator=g)
    return f, labels


# ---------------------------------------------------------------------------- extraction
def test_extraction_recovers_planted_blocks():
    C, D, block = 4, 24, 3
    f, y = planted_features(C, D, block)
    idx, freq = dd.influential_indices(f, y, C, k=block, n=block)
    for c in range(C):
        assert idx[c] == list(range(c * block, (c + 1) * block))
        # every image of class c has exactly its block as top-3
        assert freq[c, c * block:(c + 1) * block].tolist() == [30, 30, 30]
        assert freq[c].sum() == 30 * block
    assert freq.shape == (C, D)


def test_tie_breaks_are_lower_index_first():
    f = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 2.0, 2.0, 2.0]])
    assert dd.topk_per_image(f, 2).tolist() == [[0, 1], [1, 2]]
    freq = np.array([[3, 5, 5, 1], [2, 2, 2, 2]])
    assert dd.most_frequent(freq, 2) == {0: [1, 2], 1: [0, 1]}


def test_wrong_k_or_n_is_a_param_error():
    f, y = planted_features()
    for k, n in ((0, 3), (3, 0), (3, 25), (25, 3)):
        with pytest.raises(ParamError):
            dd.influential_indices(f, y, 4, k=k, n=n)


# ---------------------------------------------------------------------------- decomposed head
def _linear(C=5, D=12, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(D, C)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(C, D))  # distinct rows
        lin.bias.copy_(torch.randn(C))
    return lin


def test_decomposed_head_with_all_indices_equals_linear():
    lin = _linear()
    C, D = lin.weight.shape
    head = dd.DecomposedHead.from_linear(lin, {c: list(range(D)) for c in range(C)})
    f = torch.randn(7, D)
    assert torch.allclose(head(f), lin(f), atol=1e-5)


def test_decomposed_head_equals_masked_linear_shape_and_row_init():
    lin = _linear()
    C, D = lin.weight.shape
    rng = np.random.default_rng(1)
    idx = {c: rng.choice(D, size=3, replace=False).tolist() for c in range(C)}
    head = dd.DecomposedHead.from_linear(lin, idx)
    f = torch.randn(6, D)
    out = head(f)
    assert out.shape == (6, C)  # upstream returned (B, 1, C)
    Wm = dd.masked_weight(lin.weight.detach(), idx)
    assert torch.allclose(out, f @ Wm.T + lin.bias.detach(), atol=1e-5)
    # row c holds W[c, S_c], not class 0's weights (the upstream gather bug)
    for c in range(C):
        assert torch.equal(head.weight[c].detach(), lin.weight[c, idx[c]].detach())
    assert not torch.equal(head.weight[1], lin.weight[0, idx[1]].detach())
    assert torch.equal(head.dense_weight().detach(), Wm)
    assert torch.equal(head.bias.detach(), lin.bias.detach())


def test_decompose_replaces_head_of_a_model_and_leaves_original():
    model = models.build("resnet20", 10).eval()
    idx = {c: [c, c + 1, 63 - c] for c in range(10)}
    dec = dd.decompose(model, idx).eval()
    x = torch.randn(2, 3, 32, 32)
    f, z = models.pooled_features(model, x)
    assert isinstance(models.head(model)[1], nn.Linear)
    assert isinstance(models.head(dec)[1], dd.DecomposedHead)
    expected = f @ dd.masked_weight(model.linear.weight.detach(), idx).T + model.linear.bias
    assert torch.allclose(dec(x), expected, atol=1e-5)
    assert dd.DecomposedHead.from_linear(model.linear, idx).weight.numel() == 30


# ---------------------------------------------------------------------------- index files
def test_index_json_round_trip_and_layout(tmp_path):
    idx = {0: [7, 23, 54], 1: [9, 47, 40], 2: [1, 0, 13]}
    path = dd.write_indices(idx, tmp_path / "idx.json")
    raw = json.loads(path.read_text())
    assert raw == {"0": [7, 23, 54], "1": [9, 47, 40], "2": [1, 0, 13]}
    assert dd.read_indices(path, 3, 64) == idx


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
        dd.read_indices(path, num_classes=3, num_features=64)
    with pytest.raises(DataError, match="not found"):
        dd.read_indices(tmp_path / "nope.json", 3, 64)


# ---------------------------------------------------------------------------- mutual information
def test_mutual_information_matches_sklearn_and_orders_disjoint_below_shared():
    from sklearn.metrics import mutual_info_score

    D = 64
    disjoint = {c: list(range(5 * c, 5 * c + 5)) for c in range(10)}
    shared = {c: [0, 1, 2, 3, 10 + c] for c in range(10)}
    for idx in (disjoint, shared):
        X = dd.indicator_matrix(idx, D)
        M = dd.pairwise_mutual_information(idx, D)
        assert M[2, 5] == pytest.approx(mutual_info_score(X[2], X[5]), abs=1e-12)
        assert dd.mean_mutual_information(idx, D, True) == pytest.approx(
            np.mean([mutual_info_score(X[i], X[j]) for i in range(10) for j in range(10)]), abs=1e-12)
    for self_pairs in (True, False):
        assert dd.mean_mutual_information(disjoint, D, self_pairs) < dd.mean_mutual_information(shared, D, self_pairs)
    assert dd.mean_mutual_information(disjoint, D, False) < dd.mean_mutual_information(disjoint, D, True)


def test_published_mi_numbers_reproduce():
    needs(PUBLISHED, PUBLISHED_CSG)
    ours = dd.read_indices(PUBLISHED, 10, 64)
    csg = dd.read_indices(PUBLISHED_CSG, 10, 64)
    assert dd.mean_mutual_information(ours, 64) == pytest.approx(0.034538, abs=5e-7)
    assert dd.mean_mutual_information(csg, 64) == pytest.approx(0.037509, abs=5e-7)


# ---------------------------------------------------------------------------- essentiality
def test_noise_is_seeded_and_hits_only_the_chosen_features():
    f, y = planted_features()
    idx = {c: [3 * c, 3 * c + 1, 3 * c + 2] for c in range(4)}
    a = dd.perturb(f, y, idx, "influential", seed=3)
    b = dd.perturb(f, y, idx, "influential", seed=3)
    c = dd.perturb(f, y, idx, "influential", seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    mask = torch.as_tensor(dd.indicator_matrix(idx, f.shape[1]), dtype=torch.bool)[y]
    assert torch.equal(a[~mask], f[~mask]) and not torch.equal(a[mask], f[mask])
    nb = dd.perturb(f, y, idx, "non_influential", seed=3)
    assert torch.equal(nb[mask], f[mask]) and not torch.equal(nb[~mask], f[~mask])
    add = dd.perturb(f, y, idx, "influential", mode="additive", scale=0.0, seed=3)
    assert torch.equal(add, f)


def test_essentiality_on_planted_features():
    C, D = 4, 24
    f, y = planted_features(C, D)
    lin = nn.Linear(D, C)
    with torch.no_grad():  # a linear layer that reads only each class's block
        lin.weight.copy_(torch.from_numpy(dd.indicator_matrix({c: [3 * c, 3 * c + 1, 3 * c + 2] for c in range(C)}, D)).float())
        lin.bias.zero_()
    feats = dd.Features(f, f @ lin.weight.T, y)
    idx = {c: [3 * c, 3 * c + 1, 3 * c + 2] for c in range(C)}
    table = dd.essentiality_table({"planted": (feats, lin, idx)}, seed=0)
    s = dd.essentiality_summary(table)
    assert s.loc[("planted", "non-influential"), "acc with noise (%)"] > 90
    assert s.loc[("planted", "influential"), "acc with noise (%)"] < 60
    assert (table["images"] == 30).all()


# ---------------------------------------------------------------------------- CSG
def test_gate_selection_largest_versus_smallest():
    G = torch.tensor([[0.9, 0.1, 0.5, 0.0, 0.7], [0.2, 0.8, 0.8, 0.3, 0.05]])
    assert dd.csg_indices(G, 2) == {0: [0, 4], 1: [1, 2]}
    assert dd.csg_indices(G, 2, select="smallest") == {0: [3, 1], 1: [4, 0]}
    with pytest.raises(ParamError):
        dd.csg_indices(G, 6)


def test_csg_gating_pooled_features_equals_gating_last_layer():
    model = models.build("small_resnet", 5, width_mult=0.25).eval()
    net = dd.CSGNet(model)
    net.set_gates(torch.rand(5, net.gates.shape[1]))
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 3, 4])
    f, _ = models.pooled_features(model, x)
    via_features = net.gated_logits(f, y)
    with hooks.channel_gates(model, {"layer3": net.gates[y].detach()}):
        via_maps = model(x)
    assert torch.allclose(via_features, via_maps, atol=1e-5)


def test_csg_loss_has_sparsity_and_gates_receive_gradients():
    model = models.build("small_resnet", 4, width_mult=0.25)
    net = dd.CSGNet(model)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    loss0, logits = dd.csg_loss(0.0, 0.0)(net, x, y)
    loss1, _ = dd.csg_loss(0.0, 0.5)(net, x, y)
    C, D = net.gates.shape
    assert logits.shape == (4, 4)
    assert loss1.item() == pytest.approx(loss0.item() + 0.5 * C * D, rel=1e-4)  # gates start at 1
    loss2, _ = dd.csg_loss(1.0, 0.1)(net, x, y)
    loss2.backward()
    assert net.gate_param.grad is not None and net.gate_param.grad.abs().sum() > 0
    fast = dd.CSGNet(models.build("small_resnet", 4, width_mult=0.25), gate_scale=10.0)
    assert torch.allclose(fast.gates, torch.ones(4, D)) and torch.allclose(fast.gate_param, torch.full((4, D), 0.1))


def test_legacy_smallest_gates_reproduce_published_csg_indices():
    needs(CSG_CKPT, PUBLISHED_CSG)
    net = dd.load_csg_checkpoint(CSG_CKPT)
    assert tuple(net.gates.shape) == (10, 64)
    assert dd.csg_indices(net.gates, 5, select="smallest") == dd.read_indices(PUBLISHED_CSG, 10, 64)
    assert dd.csg_indices(net.gates, 5) != dd.read_indices(PUBLISHED_CSG, 10, 64)


# ---------------------------------------------------------------------------- real checkpoint
def test_akamaster_checkpoint_and_published_indices_on_cifar_subset():
    needs(AKAMASTER, CIFAR_NPZ, PUBLISHED)
    d = np.load(CIFAR_NPZ)
    mean, std = dd.NORMALIZATIONS["imagenet"]
    x = (torch.tensor(d["images"][:200]).float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    y = torch.tensor(d["labels"][:200])
    model = models.load_weights(models.build("resnet20", 10), AKAMASTER).eval()
    f, z = models.pooled_features(model, x)
    assert f.shape == (200, 64)
    acc = (z.argmax(1) == y).float().mean().item()
    assert 0.85 <= acc <= 0.97
    dec = dd.decompose(model, dd.read_indices(PUBLISHED, 10, 64)).eval()
    acc_dec = (dec(x).argmax(1) == y).float().mean().item()
    assert 0.75 <= acc_dec < acc + 0.02


def test_missing_checkpoint_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        models.load_weights(models.build("resnet20", 10), tmp_path / "missing.th")
    with pytest.raises(DataError, match="not found"):
        dd.load_csg_checkpoint(tmp_path / "missing.pth")


# ---------------------------------------------------------------------------- setup on CIFAR-10 layouts
def _akamaster_like_checkpoint(path):
    """A random ResNet-20 saved like the akamaster files: module. prefix, no num_batches_tracked."""
    state = {f"module.{k}": v for k, v in models.build("resnet20", 10).state_dict().items()
             if not k.endswith("num_batches_tracked")}
    torch.save({"best_prec1": 10.0, "state_dict": state}, path)
    return path


def test_setup_reads_a_cifar10_batches_folder_and_an_npz_subset(tmp_path, monkeypatch):
    import pickle

    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, count in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 20)]:
        batch = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in np.arange(count) % 10]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    weights = _akamaster_like_checkpoint(tmp_path / "r20.th")
    common = dict(model="resnet20", weights=str(weights), dataset="cifar10", k=3, n=2, k_grid=[3], n_grid=[2],
                  progress=False, device="cpu")
    S = dd.setup(dd.DecompositionConfig(data_root=str(folder), **common))
    assert S.fit_label == "CIFAR-10 train (20 images)" and S.eval_label == "CIFAR-10 test (20 images)"
    assert S.feats_fit.features.shape == (20, 64) and S.classes[3] == "c3"
    assert S.all_label is None

    npz = tmp_path / "sub.npz"
    np.savez(npz, images=rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8), labels=np.arange(40) % 10,
             classes=np.array([f"c{i}" for i in range(10)]))
    S = dd.setup(dd.DecompositionConfig(data_root=str(npz), **common))
    assert S.fit_label.startswith("CIFAR-10 test[0:40] fit part (20") and "eval part (20" in S.eval_label
    assert sorted(np.bincount(S.feats_eval.labels.numpy()).tolist()) == [2] * 10  # stratified
    acc = dd.accuracy_table(S, {"x": {c: [c, c + 1] for c in range(10)}})
    assert "acc (%) CIFAR-10 test[0:40] all (40 images)" in acc.columns and "seed (full CIFAR-10 test)" in acc.columns


@pytest.mark.parametrize("field, value", [("n", 0), ("k", 0), ("noise", "pink"), ("fit_fraction", 1.0),
                                          ("normalize", "weird"), ("max_train_images", 0)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ParamError) as err:
        dd.DecompositionConfig(**{field: value})
    assert err.value.param == field


def test_n_above_feature_count_is_rejected_at_setup_level():
    f, y = planted_features(D=24)
    with pytest.raises(ParamError, match="D = 24"):
        dd.influential_indices(f, y, 4, k=3, n=25)
    with pytest.raises(DataError, match="outside"):
        dd.DecomposedHead.from_linear(_linear(C=3, D=12), {0: [1], 1: [2], 2: [12]})
