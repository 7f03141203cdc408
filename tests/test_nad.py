"""NAD (Hu et al. 2021): planted paths, exact invariants of the search, maps, mosaics and similarity,
the notebooks' configurations and the cached, resumable search."""

import types

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from helpers.nad import SIZE, G, K, Planted, Tiny, planted_images, planted_tensors, search_config, true_paths
from netanatomy import cache
from netanatomy.data import ArrayDataset
from netanatomy.errors import ParamError
from netanatomy.hooks import channel_gates
from netanatomy.nad import method, run
from netanatomy.subject import Subject


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster and immune to spin-waiting on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_planted_paths_are_recovered():
    cfg = search_config(epochs=40, lr=0.4, batch_size=12)
    res = method.search(Planted(), planted_images(), ["r1", "r2"], cfg, SIZE)
    for layer, hard in res.hard().items():
        for c in range(K):
            expected = torch.zeros(K * G, dtype=torch.bool)
            expected[G * c:G * (c + 1)] = True
            assert torch.equal(hard[c], expected), (layer, c, hard[c].int().tolist())


def test_all_ones_gates_reproduce_ungated_outputs_exactly():
    model = Tiny().eval()
    x = planted_tensors()[0][:8]
    with torch.no_grad():
        ref = model(x)
        with channel_gates(model, {"b1": torch.ones(8), "b2": torch.ones(len(x), 12)}):
            gated = model(x)
    assert torch.equal(ref, gated)
    ones = method.activation_maps(model, x, ["b1", "b2"], {"b1": torch.ones(8), "b2": torch.ones(12)})
    plain = method.activation_maps(model, x, ["b1", "b2"], None)
    for name in ones:
        assert torch.equal(ones[name], plain[name])


def test_every_layer_step_has_norm_lr_and_weights_stay_frozen():
    model = Tiny().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = planted_tensors()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    gen = torch.Generator().manual_seed(1)
    logits = {"b1": torch.randn(K, 8, generator=gen), "b2": torch.randn(K, 12, generator=gen)}
    start = {k: v.clone() for k, v in logits.items()}
    with method.frozen(model):
        stats = method.search_step(model, ["b1", "b2"], logits, x, y.clone(), y, beta=1.0, lr=0.1)
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
    method.search(model, planted_images(), ["b1", "b2"], search_config(epochs=1), SIZE)
    assert Spy.seen and not any(Spy.seen)               # eval mode, no weight requires grad
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_larger_beta_keeps_fewer_channels():
    model, images = Tiny(), planted_images()
    kept = []
    for beta in (0.0, 30.0):
        res = method.search(model, images, ["b1", "b2"], search_config(beta=beta, epochs=6), SIZE)
        kept.append(sum(int(v.sum()) for v in res.hard().values()))
    assert kept[1] < kept[0]


def test_batched_equals_sequential_and_classes_are_independent():
    model, images = Tiny(), planted_images()
    c = search_config(epochs=2)
    batched = method.search(model, images, ["b1", "b2"], c, SIZE, batched=True)
    sequential = method.search(model, images, ["b1", "b2"], c, SIZE, batched=False)
    alone = method.search(model, images, ["b1", "b2"], c.replace(classes=[2]), SIZE)
    assert batched.classes == sequential.classes == list(range(K))
    for name in batched.layers:
        torch.testing.assert_close(batched.logits[name], sequential.logits[name], atol=1e-5, rtol=0)
        assert torch.equal(batched.hard()[name], sequential.hard()[name])
        torch.testing.assert_close(alone.logits[name][0], batched.logits[name][2], atol=1e-5, rtol=0)
    np.testing.assert_allclose(batched.history["loss"].values, sequential.history.sort_values(
        ["epoch", "class"])["loss"].values, rtol=1e-4)


def test_resume_equals_uninterrupted(tmp_path):
    model, images = Tiny(), planted_images()
    c = search_config(epochs=3, path_epoch=2)
    full = method.search(model, images, ["b1", "b2"], c, SIZE)
    ckpt = cache.Checkpoint(tmp_path / "search.ckpt.pt")
    part = method.search(model, images, ["b1", "b2"], c, SIZE, checkpoint=ckpt, stop_after_epoch=1)
    assert part.meta["epochs_done"] == 1 and ckpt.path.exists()
    resumed = method.search(model, images, ["b1", "b2"], c, SIZE, checkpoint=ckpt)
    for name in full.layers:
        assert torch.equal(full.logits[name], resumed.logits[name])
        assert torch.equal(full.final_logits[name], resumed.final_logits[name])
    assert full.history.equals(resumed.history)
    # the cached form (what run.find_paths stores) gives the result back
    store = lambda: cache.cached(tmp_path / "result.pt", lambda ck: resumed,  # noqa: E731
                                 load=method.PathResult.from_dict, dump=method.PathResult.to_dict)
    store()
    loaded = store()
    assert loaded is not resumed and loaded.meta["version"] and loaded.meta["config"]["beta"] == 2.0
    assert torch.equal(loaded.logits["b1"], resumed.logits["b1"]) and loaded.history.equals(resumed.history)


def _rgb_subject(n_per_class: int = 6, size: int = SIZE) -> Subject:
    """A Tiny RGB net on an in-memory data set of random uint8 images (K classes)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (K * n_per_class, size, size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(K), n_per_class)
    mean_std = ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    ds = ArrayDataset(images, labels, [f"c{c}" for c in range(K)], T.Compose([T.ToTensor(), T.Normalize(*mean_std)]))
    data = types.SimpleNamespace(train=ds, val=ds, classes=ds.classes, input_size=size, dataset="planted",
                                 mean_std=mean_std, key=lambda: {"dataset": "planted", "n": len(ds)})
    return Subject("tiny", Tiny(in_channels=3).eval(), data)


def test_images_read_raw_pixels_normalised_like_the_data_set():
    S = _rgb_subject()
    images = run.Images.of_dataset(S.train_ds, S.data.mean_std)
    assert images.targets.tolist() == S.train_ds.targets
    for i in (0, 7, 23):
        torch.testing.assert_close(images.tile(i, SIZE), S.train_ds[i][0], atol=1e-6, rtol=0)
        torch.testing.assert_close(images.display(images.tile(i, SIZE)), T.ToTensor()(S.train_ds.images[i]),
                                   atol=1e-6, rtol=0)


def test_find_paths_resumes_an_interrupted_search_then_loads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path))
    S, layers = _rgb_subject(), ["b1", "b2"]
    c = search_config(epochs=3, batch_size=4)
    images = run.Images.of_dataset(S.train_ds, S.data.mean_std)
    full = method.search(S.model, images, layers, c, SIZE, S.classes)
    path = run.paths_entry(S, c, layers)
    method.search(S.model, images, layers, c, SIZE, S.classes, checkpoint=cache.checkpoint_of(path), stop_after_epoch=1)
    epochs_run = []
    search = method.search
    monkeypatch.setattr(method, "search", lambda *a, **kw: epochs_run.append(1) or search(*a, **kw))
    first = run.find_paths(S, c, layers)
    second = run.find_paths(S, c, layers)
    assert epochs_run == [1] and path.is_file() and not cache.checkpoint_of(path).path.exists()
    for name in layers:
        assert torch.equal(first.logits[name], full.logits[name])
        assert torch.equal(second.logits[name], full.logits[name])
    assert first.history.equals(full.history) and first.meta["epochs_done"] == 3


def test_notebook_configs_check_their_parameters():
    shared = dict(dataset="concept_world", scale="smoke", beta=0.1, lr=0.5, epochs=2, path_epoch=None, batch_size=8,
                  images_per_class=16, classes=None, seed=0, device="cpu", progress=False, data_root=None)
    find = run.FindPathConfig.from_params(dict(shared, model="small_vgg", weights=None, sweep_betas=[0.1],
                                               sweep_classes=[0]))
    sub = run.SubArchConfig.from_params(dict(shared, model="small_vgg", weights=None, top_k=3, n_random=2))
    assert find.path_epoch == 2 and find.search_fields() == sub.search_fields()   # nad_subarch reuses the paths
    assert "sweep_betas" not in find.search_fields() and "scale" not in find.search_fields()
    hit = run.HitRateConfig.from_params(dict(shared, beta=None, models=["small_vgg", "small_resnet"], weights={},
                                             n_mosaics=4, mask_rate=0.1, cam_mask_rate=0.05, cam_class=0, legacy=False))
    assert hit.search_for("small_resnet").beta == run.BUILTIN_BETA["small_resnet"]
    assert run.beta_for("vgg16", "imagenet", None) == 4.5 and run.beta_for("vgg16", "imagenet", 1.0) == 1.0
    with pytest.raises(ParamError, match="n_mosaic"):
        run.FindPathConfig.from_params(dict(shared, n_mosaics=3))
    with pytest.raises(ParamError, match="weights"):
        hit.replace(weights={"vgg16": "w.pth"})
    with pytest.raises(ParamError, match="mask_rate"):
        hit.replace(mask_rate=0.0)
    with pytest.raises(ParamError, match="beta"):
        run.beta_for("alexnet", "imagenet", None)


def test_mosaic_tiles_at_exact_offsets():
    n = 3
    y = torch.arange(6).repeat_interleave(n)
    x = torch.arange(len(y), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 5, 5).clone()
    mos = method.make_mosaics(run.Images.of_tensors(x, y), n=7, tile=5, seed=3)
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
    sel = method.select_top(cams, 0.1)
    k = round(0.1 * 256)
    torch.testing.assert_close(sel.sum((1, 2)), torch.full((5,), float(k)))
    shares = method.quadrant_shares(sel)
    torch.testing.assert_close(shares.sum(1), torch.ones(5))
    torch.testing.assert_close(shares[1], torch.full((4,), 0.25))
    torch.testing.assert_close(shares[2], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    # exact selection picks precisely the k largest of distinct values
    top = cams[0].flatten().topk(k).indices
    assert torch.equal(sel[0].flatten().nonzero().flatten().sort().values, top.sort().values)
    # legacy: uint8 quantisation and the strict '>' rule
    ramp = torch.linspace(0, 1, 100).view(1, 10, 10)
    legacy = method.legacy_select(ramp, (10, 10), 0.1, 100)
    assert int(legacy.sum()) == 9                          # strictly above the 10th largest value


def test_hit_rates_planted_paths_hit_their_quadrant():
    model, images, res = Planted(), planted_images(n=4), true_paths()
    mos = method.make_mosaics(images, n=6, tile=SIZE, seed=0)
    label = dict(model="planted", paths="learned")
    hits = run.hit_summary(method.hit_rates(model, res, mos, progress=False).assign(**label))
    assert np.allclose(hits["mean"], 1.0) and (hits["n_mosaics"] == 6).all()
    control = method.hit_rates(model, run.random_paths(res, seed=1), mos, progress=False)
    control = run.hit_summary(control.assign(**label))
    assert (control["mean"] < 0.9).all()


def test_iou_matrix_properties():
    g = torch.Generator().manual_seed(0)
    logits = {"a": torch.randn(6, 10, generator=g), "b": torch.randn(6, 7, generator=g)}
    logits["a"][5] = -1.0                                   # an empty layer path
    logits["a"][4] = -1.0
    res = method.PathResult(["a", "b"], list(range(6)), [str(c) for c in range(6)], logits, logits, None, {})
    sim = method.iou_matrix(res)
    assert np.allclose(sim, sim.T) and (sim >= 0).all() and (sim <= 1).all()
    assert np.allclose(np.diag(sim), 1.0)
    ha = logits["a"][0] > 0
    hb = logits["a"][1] > 0
    iou_a = (ha & hb).sum().item() / (ha | hb).sum().item()
    ha, hb = logits["b"][0] > 0, logits["b"][1] > 0
    iou_b = (ha & hb).sum().item() / (ha | hb).sum().item()
    assert sim[0, 1] == pytest.approx((iou_a + iou_b) / 2)
    top = method.top_similar(sim, 3)
    assert top.shape == (6, 3) and all(r not in top[r] for r in range(6))


def test_bad_parameters_raise_param_error():
    with pytest.raises(ParamError, match="beta"):
        method.SearchConfig(beta=-1.0)
    with pytest.raises(ParamError, match="path_epoch"):
        method.SearchConfig(epochs=3, path_epoch=5)
    with pytest.raises(ParamError, match="classes"):
        method.search(Tiny(), planted_images(), ["b1"], search_config(classes=[9]), SIZE)
