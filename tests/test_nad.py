"""NAD (Hu et al. 2021): planted paths, exact invariants of the search, maps, mosaics and similarity."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from netanatomy import nad
from netanatomy.errors import ParamError
from netanatomy.hooks import channel_gates

K, G, SIZE = 4, 4, 12     # classes, channels per class group, image size


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster and immune to spin-waiting on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Planted(nn.Module):
    """Class c lights input channel c; channels G*c..G*c+G-1 of both gated layers respond only to it,
    and only they feed the logit of class c. The path of class c is therefore exactly its group."""

    def __init__(self):
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(K, K * G, 1), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(K * G, K * G, 1), nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(K * G, K)
        with torch.no_grad():
            for p in self.parameters():
                p.zero_()
            self.c1.bias.fill_(-0.2)
            for j in range(K * G):
                self.c1.weight[j, j // G] = 1.0
                self.c2.weight[j, j] = 1.0
                self.fc.weight[j // G, j] = 3.0

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.r2(self.c2(self.r1(self.c1(x))))), 1))


class Tiny(nn.Module):
    """A small random CNN with BN (eval mode) for the exact invariants."""

    def __init__(self, classes=K, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.b1 = nn.Sequential(nn.Conv2d(K, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1, stride=2), nn.BatchNorm2d(12), nn.ReLU())
        self.fc = nn.Linear(12, classes)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.fc(self.b2(self.b1(x)).mean((2, 3)))


def planted_data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(K).repeat_interleave(n)
    x = torch.rand(K * n, K, SIZE, SIZE, generator=g) * 0.1
    x[torch.arange(K * n), y] += 1.0
    return torch.utils.data.TensorDataset(x, y)


def cfg(**kw):
    base = dict(beta=2.0, lr=0.3, epochs=3, batch_size=6, path_epoch=None, progress=False, seed=0)
    base.update(kw)
    return nad.SearchConfig(**base)


def test_planted_paths_are_recovered():
    model, ds = Planted(), planted_data()
    res = nad.search(model, ds, ["r1", "r2"], cfg(epochs=40, lr=0.4, batch_size=12), SIZE)
    for layer, hard in res.hard().items():
        for c in range(K):
            expected = torch.zeros(K * G, dtype=torch.bool)
            expected[G * c:G * (c + 1)] = True
            assert torch.equal(hard[c], expected), (layer, c, hard[c].int().tolist())


def test_all_ones_gates_reproduce_ungated_outputs_exactly():
    model, ds = Tiny().eval(), planted_data()
    x = torch.stack([ds[i][0] for i in range(8)])
    with torch.no_grad():
        ref = model(x)
        with channel_gates(model, {"b1": torch.ones(8), "b2": torch.ones(len(x), 12)}):
            gated = model(x)
    assert torch.equal(ref, gated)
    ones = nad.activation_maps(model, x, ["b1", "b2"], {"b1": torch.ones(8), "b2": torch.ones(12)})
    plain = nad.activation_maps(model, x, ["b1", "b2"], None)
    for name in ones:
        assert torch.equal(ones[name], plain[name])


def test_every_layer_step_has_norm_lr_and_weights_stay_frozen():
    model = Tiny().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ds = planted_data()
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    gen = torch.Generator().manual_seed(1)
    logits = {"b1": torch.randn(K, 8, generator=gen), "b2": torch.randn(K, 12, generator=gen)}
    start = {k: v.clone() for k, v in logits.items()}
    with nad.frozen(model):
        stats = nad.search_step(model, ["b1", "b2"], logits, x, y.clone(), y, beta=1.0, lr=0.1)
    for r in range(K):
        has_correct = bool(correct[y == r].any())
        assert bool(stats["stepped"][r]) == has_correct
        for name in logits:
            step = (logits[name][r] - start[name][r]).norm().item()
            assert step == pytest.approx(0.1 if has_correct else 0.0, abs=1e-6)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())


def test_search_freezes_weights_and_restores_flags():
    class Spy(Tiny):
        seen: list = []

        def forward(self, x):
            Spy.seen.append(any(p.requires_grad for p in self.parameters()) or self.training)
            return super().forward(x)

    model = Spy().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nad.search(model, planted_data(), ["b1", "b2"], cfg(epochs=1), SIZE)
    assert Spy.seen and not any(Spy.seen)               # eval mode, no weight requires grad
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_larger_beta_keeps_fewer_channels():
    model, ds = Tiny(), planted_data()
    kept = []
    for beta in (0.0, 30.0):
        res = nad.search(model, ds, ["b1", "b2"], cfg(beta=beta, epochs=6), SIZE)
        kept.append(sum(int(v.sum()) for v in res.hard().values()))
    assert kept[1] < kept[0]


def test_batched_equals_sequential_and_classes_are_independent():
    model, ds = Tiny(), planted_data()
    c = cfg(epochs=2)
    batched = nad.search(model, ds, ["b1", "b2"], c, SIZE, batched=True)
    sequential = nad.search(model, ds, ["b1", "b2"], c, SIZE, batched=False)
    alone = nad.search(model, ds, ["b1", "b2"], dataclasses.replace(c, classes=[2]), SIZE)
    assert batched.classes == sequential.classes == list(range(K))
    for name in batched.layers:
        torch.testing.assert_close(batched.logits[name], sequential.logits[name], atol=1e-5, rtol=0)
        assert torch.equal(batched.hard()[name], sequential.hard()[name])
        torch.testing.assert_close(alone.logits[name][0], batched.logits[name][2], atol=1e-5, rtol=0)
    np.testing.assert_allclose(batched.history["loss"].values, sequential.history.sort_values(
        ["epoch", "class"])["loss"].values, rtol=1e-4)


def test_resume_equals_uninterrupted(tmp_path):
    model, ds = Tiny(), planted_data()
    c = cfg(epochs=3, path_epoch=2)
    full = nad.search(model, ds, ["b1", "b2"], c, SIZE)
    ckpt = tmp_path / "search.ckpt"
    part = nad.search(model, ds, ["b1", "b2"], c, SIZE, checkpoint=ckpt, stop_after_epoch=1)
    assert part.meta["epochs_done"] == 1 and ckpt.exists()
    resumed = nad.search(model, ds, ["b1", "b2"], c, SIZE, checkpoint=ckpt)
    for name in full.layers:
        assert torch.equal(full.logits[name], resumed.logits[name])
        assert torch.equal(full.final_logits[name], resumed.final_logits[name])
    assert full.history.equals(resumed.history)
    saved = resumed.save(tmp_path / "result.pt")
    loaded = nad.PathResult.load(saved)
    assert loaded.meta["version"] and loaded.meta["config"]["beta"] == 2.0
    assert torch.equal(loaded.logits["b1"], resumed.logits["b1"])


def test_mosaic_tiles_at_exact_offsets():
    n = 3
    y = torch.arange(6).repeat_interleave(n)
    x = torch.arange(len(y), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 5, 5).clone()
    ds = torch.utils.data.TensorDataset(x, y)
    mos = nad.make_mosaics(ds, n=7, tile=5, seed=3)
    assert mos.images.shape == (7, 3, 10, 10)
    for m in range(7):
        assert len(set(mos.classes[m].tolist())) == 4
        for q, (r0, c0) in enumerate([(0, 0), (0, 5), (5, 0), (5, 5)]):
            i = mos.indices[m, q]
            assert int(y[i]) == mos.classes[m, q]
            assert torch.all(mos.images[m, :, r0:r0 + 5, c0:c0 + 5] == float(i))


def test_quadrant_shares_and_top_selection():
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(5, 16, 16, generator=g)
    cams[1] = 0.0                                          # constant map
    cams[2] = 0.0
    cams[2, :8, 8:] = 1.0                                  # all top pixels in the top-right quadrant
    sel = nad.select_top(cams, 0.1)
    k = round(0.1 * 256)
    torch.testing.assert_close(sel.sum((1, 2)), torch.full((5,), float(k)))
    shares = nad.quadrant_shares(sel)
    torch.testing.assert_close(shares.sum(1), torch.ones(5))
    torch.testing.assert_close(shares[1], torch.full((4,), 0.25))
    torch.testing.assert_close(shares[2], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    # exact selection picks precisely the k largest of distinct values
    top = cams[0].flatten().topk(k).indices
    assert torch.equal(sel[0].flatten().nonzero().flatten().sort().values, top.sort().values)
    # legacy: uint8 quantisation and the strict '>' rule
    ramp = torch.linspace(0, 1, 100).view(1, 10, 10)
    legacy = nad._legacy_select(ramp, (10, 10), 0.1, 100)
    assert int(legacy.sum()) == 9                          # strictly above the 10th largest value


def test_hit_rates_planted_paths_hit_their_quadrant():
    model, ds = Planted(), planted_data(n=4)
    true_logits = {name: -torch.ones(K, K * G) for name in ("r1", "r2")}
    for name in true_logits:
        for c in range(K):
            true_logits[name][c, G * c:G * (c + 1)] = 1.0
    res = nad.PathResult(["r1", "r2"], list(range(K)), [str(c) for c in range(K)], true_logits, true_logits,
                         None, {})
    mos = nad.make_mosaics(ds, n=6, tile=SIZE, seed=0)
    hits = nad.summarize_hits(nad.hit_rates(model, res, mos, progress=False))
    assert np.allclose(hits["mean"], 1.0)
    control = nad.summarize_hits(nad.hit_rates(model, nad.random_paths(res, seed=1), mos, progress=False))
    assert (control["mean"] < 0.9).all()


def test_iou_matrix_properties():
    g = torch.Generator().manual_seed(0)
    logits = {"a": torch.randn(6, 10, generator=g), "b": torch.randn(6, 7, generator=g)}
    logits["a"][5] = -1.0                                   # an empty layer path
    logits["a"][4] = -1.0
    res = nad.PathResult(["a", "b"], list(range(6)), [str(c) for c in range(6)], logits, logits, None, {})
    sim = nad.iou_matrix(res)
    assert np.allclose(sim, sim.T) and (sim >= 0).all() and (sim <= 1).all()
    assert np.allclose(np.diag(sim), 1.0)
    ha = logits["a"][0] > 0
    hb = logits["a"][1] > 0
    iou_a = (ha & hb).sum().item() / (ha | hb).sum().item()
    ha, hb = logits["b"][0] > 0, logits["b"][1] > 0
    iou_b = (ha & hb).sum().item() / (ha | hb).sum().item()
    assert sim[0, 1] == pytest.approx((iou_a + iou_b) / 2)
    top = nad.top_similar(sim, 3)
    assert top.shape == (6, 3) and all(r not in top[r] for r in range(6))


def test_bad_parameters_raise_param_error():
    with pytest.raises(ParamError, match="beta"):
        nad.SearchConfig(beta=-1.0)
    with pytest.raises(ParamError, match="path_epoch"):
        nad.SearchConfig(epochs=3, path_epoch=5)
    with pytest.raises(ParamError, match="classes"):
        nad.search(Tiny(), planted_data(), ["b1"], cfg(classes=[9]), SIZE)
