"""NAD (Hu et al. 2021): planted paths, exact invariants of the search, maps, mosaics and similarity,
the notebooks' configurations and the cached, resumable search."""

import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torchvision import transforms as T

from helpers.nad import SIZE, G, K, Planted, Tiny, planted_images, planted_tensors, search_config, true_paths
from netanatomy import cache, models, params
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


SHARED = dict(dataset="concept_world", scale="smoke", beta=0.1, lr=0.5, epochs=2, path_epoch=None, batch_size=8,
              images_per_class=16, classes=None, seed=0, device="cpu", progress=False, data_root=None, amp=False)
HIT = dict(SHARED, beta=None, models=["small_vgg", "small_resnet"], weights={}, n_mosaics=4, mask_rate=0.1,
           cam_mask_rate=0.05, cam_class=0, legacy=False, search_seeds=1, n_random=2, mosaic_input="resized")
SUB = dict(SHARED, model="small_vgg", weights=None, top_k=3, n_random=2, search_seeds=1)
FIND = dict(SHARED, model="small_vgg", weights=None, sweep_betas=[0.1], sweep_classes=[0])


def test_notebook_configs_check_their_parameters():
    find = run.FindPathConfig.from_params(FIND)
    sub = run.SubArchConfig.from_params(SUB)
    assert find.path_epoch == 2 and find.search_fields() == sub.search_fields()   # nad_subarch reuses the paths
    assert "sweep_betas" not in find.search_fields() and "scale" not in find.search_fields()
    assert find.search_fields()["amp"] is False and method.SearchConfig().amp is False   # fp32 unless asked
    hit = run.HitRateConfig.from_params(HIT)
    assert hit.search_for("small_resnet").beta == run.BUILTIN_BETA["small_resnet"]
    assert hit.search_for("small_vgg").replace(seed=0).search_fields() == find.search_fields()  # shared search
    assert run.beta_for("vgg16", "imagenet", None) == 4.5 and run.beta_for("vgg16", "imagenet", 1.0) == 1.0
    assert run.beta_for("darts", "imagenet", None) == 0.45 and run.beta_for("darts", "places365", None) == 0.20
    assert run.beta_for("resnet56", "cifar10_jpeg", None) == run.CIFAR_BETA["cifar10_jpeg", "resnet56"]
    with pytest.raises(ParamError, match="beta"):
        run.beta_for("alexnet", "imagenet", None)
    with pytest.raises(ParamError, match="beta"):
        run.beta_for("resnet56", "cifar10", None)        # ours is for the JPEG training images only


@pytest.mark.parametrize("config, given, param", [
    ("FindPathConfig", dict(FIND, n_mosaics=3), "n_mosaics"),              # not a parameter of nad_findpath
    ("FindPathConfig", dict(FIND, lr="0.1"), "lr"),                        # non-numeric
    ("FindPathConfig", dict(FIND, lr=0), "lr"),
    ("FindPathConfig", dict(FIND, sweep_betas=["a"]), "sweep_betas"),
    ("FindPathConfig", dict(FIND, sweep_classes=[-1]), "sweep_classes"),
    ("FindPathConfig", dict(FIND, amp="yes"), "amp"),
    ("SubArchConfig", dict(SUB, top_k=0), "top_k"),
    ("SubArchConfig", dict(SUB, n_random=0), "n_random"),
    ("SubArchConfig", dict(SUB, n_random=-3), "n_random"),
    ("SubArchConfig", dict(SUB, search_seeds=0), "search_seeds"),
    ("HitRateConfig", dict(HIT, cam_mask_rate=0), "cam_mask_rate"),
    ("HitRateConfig", dict(HIT, cam_mask_rate=1.5), "cam_mask_rate"),
    ("HitRateConfig", dict(HIT, mask_rate=0.0), "mask_rate"),
    ("HitRateConfig", dict(HIT, cam_class=-1), "cam_class"),
    ("HitRateConfig", dict(HIT, n_mosaics=1), "n_mosaics"),
    ("HitRateConfig", dict(HIT, n_random=0), "n_random"),
    ("HitRateConfig", dict(HIT, mosaic_input="448"), "mosaic_input"),
    ("HitRateConfig", dict(HIT, weights={"vgg16": "w.pth"}), "weights"),
    ("HitRateConfig", dict(HIT, dataset="imagenet2"), "dataset"),
])
def test_bad_values_stop_before_any_work_naming_the_parameter(config, given, param):
    with pytest.raises(ParamError, match=f"parameter '{param}'"):
        getattr(run, config).from_params(given)


@pytest.mark.parametrize("config, given, param", [
    ("SubArchConfig", dict(SUB, top_k=10), "top_k"),                       # 10 classes: at most 8
    ("SubArchConfig", dict(SUB, top_k=9), "top_k"),                        # every other class: trivial 100 %
    ("SubArchConfig", dict(SUB, classes=[0, 1, 2], top_k=2), "top_k"),
    ("SubArchConfig", dict(SUB, classes=[0, 1]), "classes"),
    ("HitRateConfig", dict(HIT, cam_class=10), "cam_class"),
    ("HitRateConfig", dict(HIT, classes=[1, 2, 3, 4], cam_class=0), "cam_class"),
    ("HitRateConfig", dict(HIT, classes=[1, 2, 3]), "classes"),
    ("FindPathConfig", dict(FIND, sweep_classes=[0, 12]), "sweep_classes"),
    ("FindPathConfig", dict(FIND, classes=[10]), "classes"),
])
def test_parameters_checked_against_the_data_before_any_search(config, given, param, monkeypatch):
    """Checks that need the class count run in `subject_for`, before the main search (and the sweep)."""
    fake = types.SimpleNamespace(classes=[str(c) for c in range(10)])
    monkeypatch.setattr(run, "load_subject", lambda *a, **kw: fake)
    monkeypatch.setattr(run, "find_paths", lambda *a, **kw: pytest.fail("searched before the check"))
    cfg = getattr(run, config).from_params(given)
    with pytest.raises(ParamError, match=f"parameter '{param}'"):
        run.subjects_and_paths(cfg) if config == "HitRateConfig" else run.subject_for(cfg, cfg.model)
    assert run.SubArchConfig.from_params(dict(SUB, top_k=8)).check_data(10) is None   # the largest valid top_k


def test_real_data_without_weights_is_refused_before_reading_anything(tmp_path):
    find = run.FindPathConfig.from_params(dict(FIND, dataset="imagenet", data_root=str(tmp_path / "absent"),
                                               model="vgg16"))
    with pytest.raises(ParamError, match="parameter 'weights'.*random network"):
        run.subject_for(find, find.model)
    hit = run.HitRateConfig.from_params(dict(HIT, dataset="places365", data_root=str(tmp_path), models=["resnet50"]))
    with pytest.raises(ParamError, match="parameter 'weights'"):
        run.subjects_and_paths(hit)


def test_mosaic_tiles_at_exact_offsets_then_resized_to_the_tile_size():
    n = 3
    y = torch.arange(6).repeat_interleave(n)
    x = torch.arange(len(y), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 6, 6).clone()
    full = method.make_mosaics(run.Images.of_tensors(x, y), n=7, tile=6, seed=3, resize=False)
    assert full.images.shape == (7, 3, 12, 12)
    for m in range(7):
        assert len(set(full.classes[m].tolist())) == 4
        for q, (r0, c0) in enumerate([(0, 0), (0, 6), (6, 0), (6, 6)]):
            i = full.indices[m, q]
            assert int(y[i]) == full.classes[m, q]
            assert torch.all(full.images[m, :, r0:r0 + 6, c0:c0 + 6] == float(i))
    paper = method.make_mosaics(run.Images.of_tensors(x, y), n=7, tile=6, seed=3)
    assert paper.images.shape == (7, 3, 6, 6)                   # upstream: the 2T mosaic resized to T x T
    assert np.array_equal(paper.classes, full.classes) and np.array_equal(paper.indices, full.indices)
    # a constant tile stays constant inside its quadrant (2 x 2 average of one value), away from the seams
    for m in range(7):
        for q, (r0, c0) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
            torch.testing.assert_close(paper.images[m, :, r0:r0 + 2, c0:c0 + 2],
                                       torch.full((3, 2, 2), float(full.indices[m, q])))


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


def test_legacy_selection_counts_k_on_the_map_it_thresholds():
    """Upstream keeps the pixels strictly above the k-th largest of the map it thresholds, k = int(0.1 H W):
    on a 2T x 2T map about 10 % (not the 2.4 % of a k counted on one T x T tile)."""
    ramp = torch.linspace(0, 1, 100).view(1, 10, 10)
    assert int(method.legacy_select(ramp, (10, 10), 0.1).sum()) == 9        # strictly above the 10th largest
    big = torch.arange(48 * 48, dtype=torch.float32).view(1, 48, 48) / (48 * 48 - 1)
    kept = method.legacy_select(big, (48, 48), 0.1)                          # uint8 levels: ties of 9 pixels
    levels = torch.from_numpy(np.uint8(big.numpy() * 255).astype(np.int64))
    k = int(0.1 * 48 * 48)
    thr = levels.flatten().sort(descending=True).values[k - 1]
    assert torch.equal(kept.bool(), levels > thr)                            # brute force oracle
    assert 0.09 < float(kept.mean()) <= 0.1


class Spy(Planted):
    """The planted net, recording the input sizes it sees."""

    def __init__(self):
        super().__init__()
        self.sizes = set()

    def forward(self, x):
        self.sizes.add(tuple(x.shape[-2:]))
        return super().forward(x)


@pytest.mark.parametrize("resize", [True, False])
@pytest.mark.parametrize("legacy", [False, True])
def test_planted_quadrant_hits_one_at_both_mosaic_sizes(resize, legacy):
    """The planted net's class-c path lights exactly the class-c quadrant: hit 1 when the 2T mosaic is resized
    to T (upstream, the model sees T x T) and when it is fed at 2T; random paths of the same size miss."""
    model, images, res = Spy(), planted_images(n=4), true_paths()
    mos = method.make_mosaics(images, n=6, tile=2 * SIZE, seed=0, resize=resize)
    hits = method.hit_rates(model, res, mos, legacy=legacy, progress=False)
    assert model.sizes == {(2 * SIZE, 2 * SIZE) if resize else (4 * SIZE, 4 * SIZE)}
    assert np.allclose(hits["hit"], 1.0) and hits["mosaic"].nunique() == 6
    side = mos.images.shape[-1]
    sel = method.mosaic_selection(model, res, mos.images[:2], torch.tensor([0, 1]), 0.1, legacy)
    for v in sel.values():                                  # about 10 % of the map the model saw
        assert v.shape == (2, side, side) and 0.06 * side * side <= float(v[0].sum()) <= round(0.1 * side * side)
    control = method.hit_rates(model, run.random_paths(res, seed=1), mos, legacy=legacy, progress=False)
    assert control.groupby("layer")["hit"].mean().max() < 0.9


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


def test_damaged_search_result_is_set_aside_and_searched_again(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path))
    S, layers = _rgb_subject(), ["b1", "b2"]
    c = search_config(epochs=2, batch_size=4)
    first = run.find_paths(S, c, layers)
    path = run.paths_entry(S, c, layers)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])                       # truncated, as by a full disk or a kill
    with pytest.warns(cache.CacheWarning, match=path.name):
        again = run.find_paths(S, c, layers)
    assert path.with_name(path.name + ".damaged").exists() and path.stat().st_size == len(data)
    for name in layers:
        assert torch.equal(again.logits[name], first.logits[name])
    ckpt = cache.checkpoint_of(path)                              # a damaged checkpoint: the search starts over
    method.search(S.model, run.Images.of_dataset(S.train_ds, S.data.mean_std), layers, c, SIZE, S.classes,
                  checkpoint=ckpt, stop_after_epoch=1)
    ckpt.path.write_bytes(ckpt.path.read_bytes()[:50])
    path.unlink()
    with pytest.warns(cache.CacheWarning, match=ckpt.path.name):
        resumed = run.find_paths(S, c, layers)
    assert torch.equal(resumed.logits["b2"], first.logits["b2"]) and resumed.history.equals(first.history)


def test_class_generators_are_distinct_for_every_seed_and_class():
    seeds = {method.class_seed(s, c) for s in range(20) for c in range(100)}
    assert len(seeds) == 2000 and all(0 <= v < 2 ** 63 for v in seeds)
    assert method.class_seed(3, 7) == method.class_seed(3, 7)


def test_fp32_by_default_and_bf16_only_when_asked():
    """amp=False (the default) is fp32: two runs are bit-identical; amp=True runs the search under bf16
    autocast (also on CPU, where it is asked for to measure its effect), so the logits move."""
    model, images = Tiny(), planted_images()
    fp32 = [method.search(model, images, ["b1", "b2"], search_config(epochs=2), SIZE) for _ in range(2)]
    bf16 = method.search(model, images, ["b1", "b2"], search_config(epochs=2, amp=True), SIZE)
    for name in fp32[0].layers:
        assert torch.equal(fp32[0].logits[name], fp32[1].logits[name])
        assert not torch.equal(fp32[0].logits[name], bf16.logits[name])
        torch.testing.assert_close(bf16.logits[name], fp32[0].logits[name], atol=0.3, rtol=0)
    assert bf16.meta["config"]["amp"] is True and fp32[0].meta["config"]["amp"] is False


def _long_table(learned, random, n_seeds=1, layers=3):
    """A made-up hit table: per mosaic m, learned hits learned[m] and random hits random[m] at every layer
    (the same for every search seed and draw, offset by 0.01 * seed)."""
    rows = []
    for seed in range(n_seeds):
        for paths, values in ((run.LEARNED, learned), (run.RANDOM, random)):
            for li in range(1, layers + 1):
                rows += [{"model": "m", "paths": paths, "search_seed": seed, "draw": 0, "layer": f"l{li}",
                          "layer_index": li, "mosaic": m, "hit": v + 0.01 * seed} for m, v in enumerate(values)]
    return pd.DataFrame(rows)


def _path_verdicts(long):
    """hit_verdicts without its depth rows (the made-up tables have the same hits at every layer)."""
    out = run.hit_verdicts(long)
    return out[~out["claim"].str.contains("deepest")].reset_index(drop=True)


def test_hit_verdicts_follow_the_intervals():
    rng = np.random.default_rng(0)
    far = _path_verdicts(_long_table(0.8 + 0.05 * rng.standard_normal(50), 0.3 + 0.05 * rng.standard_normal(50)))
    assert list(far["unit"]) == ["mosaics", "mosaics"] and (far["verdict"] == "held").all()
    assert (far["n"] == 50).all() and far.iloc[0]["mean"] == pytest.approx(0.8, abs=0.02)
    below = _path_verdicts(_long_table(0.2 + 0.01 * rng.standard_normal(50), 0.5 + 0.01 * rng.standard_normal(50)))
    assert (below["verdict"] == "did not hold").all()
    noise = np.array([0.1, -0.1, 0.2, -0.2, 0.05, -0.05, 0.15, -0.15])   # a difference far inside its interval
    close = _path_verdicts(_long_table(0.26 + noise, 0.25 + noise[::-1]))
    assert (close["verdict"] == "inconclusive").all()
    seeds = _path_verdicts(_long_table(np.full(10, 0.7), np.full(10, 0.2), n_seeds=3))
    by_seed = seeds[seeds["unit"] == "search seeds"]
    assert len(by_seed) == 2 and (by_seed["n"] == 3).all()
    assert by_seed.iloc[0]["mean"] == pytest.approx(0.71) and by_seed.iloc[1]["mean"] == pytest.approx(0.5)


def test_depth_verdict_is_deepest_minus_first_layer_paired():
    """Layers 1-4 with learned hits 0.3, 0.3, 0.5, 0.7 (+ noise per mosaic): the 2 deepest minus the first
    is 0.3 exactly, held; a flat table is not held (zero difference)."""
    rng = np.random.default_rng(1)
    long = _long_table(0.3 + 0.02 * rng.standard_normal(30), np.full(30, 0.25), layers=4)
    long.loc[(long["layer_index"] == 3) & (long["paths"] == run.LEARNED), "hit"] += 0.2
    long.loc[(long["layer_index"] == 4) & (long["paths"] == run.LEARNED), "hit"] += 0.4
    rise = run.depth_verdicts(long)
    assert list(rise["unit"]) == ["mosaics"] and rise.iloc[0]["mean"] == pytest.approx(0.3)
    assert rise.iloc[0]["verdict"] == "held" and rise.iloc[0]["n"] == 30
    flat = run.depth_verdicts(_long_table(0.3 + 0.02 * rng.standard_normal(30), np.full(30, 0.25), layers=4))
    assert flat.iloc[0]["verdict"] != "held"


def test_upstream_summary_is_the_mean_of_each_of_the_last_three_layers():
    long = _long_table(np.linspace(0.5, 0.9, 10), np.full(10, 0.2), layers=4)
    long.loc[long["layer_index"] == 4, "hit"] += 0.1
    up = run.upstream_summary(long)
    assert up.loc["m", "upstream test(): layer -1"] == pytest.approx(0.8)
    assert up.loc["m", "upstream test(): layer -2"] == pytest.approx(0.7)
    assert up.loc["m", "upstream test(): layer -3"] == pytest.approx(0.7)
    assert up.loc["m", f"ours: mean of the {run.DEEP_LAYERS} deepest"] == pytest.approx(0.75)


def test_confusions_upstream_first_image_and_ours_mean_softmax():
    probs = np.array([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8]])
    labels = np.array([0, 0, 0, 2])
    nb = run.confusion_neighbours(probs, labels, [0, 2], k=2)
    assert nb[0]["first_top"] == [1, 2] and nb[0]["top"] == [0, 1]      # first image vs mean softmax
    assert nb[0]["mistaken"] == 2            # class 1 is not among the classes compared
    assert nb[2]["first_top"] == [2, 0]


def test_agreement_verdicts_over_classes_and_seeds():
    """Planted: paths whose most similar class is the class each is mistaken for agree on every class;
    random paths of the same size only by chance, and the paired interval over classes says so."""
    K, C = 8, 64
    logits = -torch.ones(K, C)
    for c in range(K):                                              # pairs (0,1), (2,3), ...: shared channels
        logits[c, 8 * (c // 2):8 * (c // 2) + 8] = 1.0
        logits[c, 32 + 4 * c:32 + 4 * c + 4] = 1.0
    res = [method.PathResult(["a"], list(range(K)), [str(c) for c in range(K)], {"a": logits}, {"a": logits}, None,
                             {"config": {"seed": s}}) for s in range(2)]
    probs = np.full((K, K), 0.01)
    for c in range(K):
        probs[c, c], probs[c, c ^ 1] = 0.6, 0.3
    nb = run.confusion_neighbours(probs, np.arange(K), list(range(K)), k=1)
    table = run.agreement_table(res, nb, k=1, n_random=10)
    top = table[table["score"] == "mistaken_in_topk"].set_index("unit")
    assert top.loc["classes", "learned paths"] == 1.0 and top.loc["classes", "random paths"] < 0.5
    assert top.loc["classes", "verdict"] == "held" and top.loc["classes", "n"] == K
    assert top.loc["search seeds", "n"] == 2


@pytest.mark.parametrize("param_file", sorted((Path(__file__).resolve().parents[1] / "params").glob("nad_*.yaml")),
                         ids=lambda p: p.name)
def test_every_nad_parameter_set_passes_its_checks(param_file):
    """The real-data sets (VGG16, ResNet50, DenseNet121, DARTS on ImageNet and Places365; the published CIFAR-10
    ResNets) and the built-in ones build their notebook's config; the ImageNet and Places365 sets use
    upstream's beta for their network, the CIFAR-10 sets ours (`run.CIFAR_BETA`)."""
    notebook = param_file.name.split(".")[0]
    given = yaml.safe_load(param_file.read_text())
    config = {"nad_findpath": run.FindPathConfig, "nad_hitrate": run.HitRateConfig, "nad_subarch": run.SubArchConfig}
    cfg = config[notebook].from_params(params.with_defaults(notebook, given))
    if cfg.dataset == "cifar10_jpeg":
        for model in getattr(cfg, "models", [getattr(cfg, "model", None)]):
            assert run.beta_for(model, cfg.dataset, given["beta"]) == run.CIFAR_BETA[(cfg.dataset, model)]
            assert cfg.normalize == "imagenet" and cfg.eval_dataset == "cifar10"   # published checkpoints: pixels
    elif cfg.dataset != "concept_world":
        for model in getattr(cfg, "models", [getattr(cfg, "model", None)]):
            assert run.beta_for(model, cfg.dataset, given["beta"]) == method.UPSTREAM_BETA[(cfg.dataset, model)]
            assert model in models.PRESETS and cfg.lr == method.UPSTREAM_LR and cfg.path_epoch == 20


def test_pair_table_known_iou_rank_and_confusion():
    """3 classes, one layer of 4 gates: paths {0,1}, {0,1,2}, {3} give IoU 2/3 (0/1), 0 (0/2, 1/2); predictions
    mix classes 0 and 2 on 2 of their 4 images, 0 and 1 on 1 of 4."""
    logits = torch.tensor([[1., 1, -1, -1], [1, 1, 1, -1], [-1, -1, -1, 1]])
    res = method.PathResult(["a"], [0, 1, 2], ["x", "y", "z"], {"a": logits}, {"a": logits}, None, {})
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([2, 1, 1, 1, 0, 2])
    table = run.pair_table([res, res], np.eye(3)[preds], labels)
    assert list(table.index) == ["x / z", "x / y", "y / z"]
    assert table.loc["x / z", "confused"] == 2 and table.loc["x / z", "confusion"] == pytest.approx(0.5)
    assert table.loc["x / y", "path IoU"] == pytest.approx(2 / 3) and table.loc["x / y", "IoU rank"] == "1 of 3"
    assert table.loc["y / z", "path IoU"] == 0 and table.loc["y / z", "IoU rank"] == "2 of 3"
    assert table.loc["y / z", "confused"] == 0
