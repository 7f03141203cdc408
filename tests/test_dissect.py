"""Network Dissection: planted detectors, vectorised tally == brute force, quantiles, invariants, tally.csv."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.dissect import Planted, RandomConv, brute_force_tally, planted_data
from netanatomy import broden
from netanatomy.dissect import figures, method, run
from netanatomy.dissect.run import Config, DissectConfig
from netanatomy.errors import DataError, ParamError
from netanatomy.world import WorldConfig


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "cache"))


NONE = DissectConfig(normalize="none", progress=False, batch_size=16)


@pytest.fixture
def planted_root(tmp_path):
    images, labels, pix, scal = planted_data()
    return broden.write_broden(tmp_path / "planted", images, labels, pix, scal, progress=False)


def test_planted_units_are_found(planted_root):
    res = run.dissect(Planted(), ["features"], planted_root, NONE)["features"]
    tally = res.tally.set_index("unit")
    for k, truth in enumerate(Planted.TRUTH, start=1):
        row = tally.loc[k]
        if truth is None:
            assert row["score"] < 0.04, (k, row["label"], row["score"])
        else:
            assert (row["category"], row["label"]) == truth
            assert row["score"] > 0.2, (k, row["score"])
    s = res.summary()
    assert s["interpretable"] == 4 and s["unique_concepts"] == 4
    assert s["per_category"] == {"object": 3, "material": 1, "scene": 0}


# ----------------------------------------------------------------------------- brute force

@pytest.mark.parametrize("rule", ["image", "lite"])
def test_vectorised_tally_equals_brute_force(tmp_path, rule):
    images, labels, pix, scal = planted_data(n=10, size=16, seed=3)
    root = broden.write_broden(tmp_path / "tiny", images, labels, pix, scal, progress=False)
    model = RandomConv()
    cfg = DissectConfig(normalize="none", progress=False, batch_size=4, union_rule=rule, quantile=0.05,
                        tally_chunk=5 * 64 * 2)  # chunks of 2 images exercise the chunking
    res = run.dissect(model, ["conv"], root, cfg)["conv"]
    ds = broden.BrodenDataset(root)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        acts = model(x).numpy()
    # thresholds: numpy's quantile over all positions of all images, exactly
    flat = acts.transpose(1, 0, 2, 3).reshape(acts.shape[1], -1)
    np.testing.assert_allclose(res.thresholds, np.quantile(flat, 0.95, axis=1), rtol=1e-6, atol=1e-6)
    inter, act_cat, truth = brute_force_tally(acts, res.thresholds.astype(np.float32), ds, rule)
    np.testing.assert_array_equal(res.intersection, inter)
    np.testing.assert_array_equal(res.activation, act_cat)
    np.testing.assert_array_equal(res.truth, truth)
    assert inter.sum() > 0 and act_cat.sum() > 0
    label_cat = ds.labelcat[1:].argmax(1)
    np.testing.assert_allclose(res.iou, method.iou_from_counts(inter, act_cat, truth, label_cat))


def test_quantile_share_and_sampled_quantile():
    torch.manual_seed(1)
    acts = torch.randn(40, 6, 9, 9) * torch.arange(1, 7).view(1, 6, 1, 1)
    n = 40 * 81
    p = method.UnitThresholds(40, quantile=0.005)
    for start in range(0, 40, 7):
        p.add(acts[start:start + 7], torch.arange(start, min(start + 7, 40)))
    r = p.result()
    assert r["method"] == "exact"
    flat = acts.permute(1, 0, 2, 3).reshape(6, -1)
    np.testing.assert_allclose(r["thresholds"].numpy(), np.quantile(flat.numpy(), 0.995, axis=1), rtol=1e-6)
    share = (flat > r["thresholds"][:, None]).sum(1).numpy()
    assert np.all(np.abs(share - 0.005 * n) <= 1)
    # top images: by per-image maximum activation
    per_image = acts.amax((2, 3))
    np.testing.assert_array_equal(r["top_idx"].numpy(), torch.topk(per_image.t(), 10).indices.numpy())
    # the sampled sketch keeps at most max_buffer values per unit and lands near the exact share
    big = torch.randn(400, 3, 16, 16)
    p = method.UnitThresholds(400, quantile=0.005, method="sample", max_buffer=300)
    for start in range(0, 400, 50):
        p.add(big[start:start + 50], torch.arange(start, start + 50))
    r = p.result()
    assert r["method"] == "sample" and p.buffer.values.shape[1] <= 300
    share = (big.permute(1, 0, 2, 3).reshape(3, -1) > r["thresholds"][:, None]).float().mean(1)
    assert torch.all((share - 0.005).abs() < 0.005 * 0.3), share  # ~5 sigma of the stated error


def test_invariants_and_duplication(tmp_path):
    images, labels, pix, scal = planted_data(n=40, size=16, seed=5)
    root = broden.write_broden(tmp_path / "one", images, labels, pix, scal, progress=False)
    dup = broden.write_broden(tmp_path / "two", np.concatenate([images, images]), labels,
                              {k: np.concatenate([v, v]) for k, v in pix.items()},
                              {k: np.concatenate([v, v]) for k, v in scal.items()}, progress=False)
    model = RandomConv()
    for rule in ("image", "lite"):
        cfg = DissectConfig(normalize="none", progress=False, union_rule=rule, quantile=0.02)
        a = run.dissect(model, ["conv"], root, cfg)["conv"]
        iou = a.iou
        assert np.all((iou >= 0) & (iou <= 1))
        cat = a.labels["category"].map({c: i for i, c in enumerate(a.categories)}).to_numpy()
        assert np.all(a.intersection <= np.minimum(a.activation[:, cat], a.truth[None, :]) + 1e-9)
        # same thresholds on the duplicated set: every count doubles, IoU is unchanged
        ds2 = broden.BrodenDataset(dup)
        batch = broden.collate([ds2[i] for i in range(len(ds2))])
        x = batch[0].permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            acts = model(x)
        inter, act_cat, truth, _ = method.tally_batch(acts, torch.tensor(a.thresholds, dtype=torch.float32),
                                                       batch[1], batch[2], torch.from_numpy(ds2.labelcat), rule)
        np.testing.assert_array_equal(inter.numpy(), 2 * a.intersection)
        np.testing.assert_allclose(method.iou_from_counts(inter.numpy(), act_cat.numpy(), truth.numpy(), cat), iou)
        # and the whole method on the duplicated set (its own thresholds) gives the same IoU
        b = run.dissect(model, ["conv"], dup, cfg)["conv"]
        np.testing.assert_allclose(b.iou, iou, atol=0.02)


def test_tally_csv_format_and_reader(planted_root, tmp_path):
    res = run.dissect(Planted(), ["features"], planted_root, NONE)
    t = res["features"].tally
    cats = ["object", "material", "scene"]
    expect = ["unit", "category", "label", "score"] + [f"{c}-{f}" for c in cats
                                                       for f in ("label", "truth", "activation", "intersect", "iou")]
    assert list(t.columns) == expect
    assert sorted(t["unit"]) == list(range(1, 8))
    assert list(t["score"]) == sorted(t["score"], reverse=True)
    assert (t["label"] != "").all() and (t["object-label"] != "").all()
    paths = run.save_results(res, tmp_path / "out")
    back = run.read_tally(paths["features"])
    pd.testing.assert_frame_equal(back[expect[:4]], t[expect[:4]], check_dtype=False)
    assert method.tally_summary(back) == res["features"].summary()
    # a published-style tally with an empty label in a category
    pub = t.copy()
    pub.loc[0, "scene-label"] = ""
    pub.sample(frac=1, random_state=0).to_csv(tmp_path / "pub.csv", index=False)
    got = run.read_tally(tmp_path / "pub.csv")
    assert list(got["score"]) == sorted(got["score"], reverse=True) and (got["scene-label"] != "").all()
    with pytest.raises(DataError, match="lacks column"):
        pd.DataFrame({"unit": [1]}).to_csv(tmp_path / "bad.csv", index=False)
        run.read_tally(tmp_path / "bad.csv")


def test_report_is_written(planted_root, tmp_path):
    res = run.dissect(Planted(), ["features"], planted_root, NONE)
    page = figures.write_report(res, tmp_path / "rep", planted_root, progress=False)
    text = page.read_text()
    assert "4/7 units covering 4 concepts with IoU &ge; 0.04" in text
    assert (tmp_path / "rep" / "features" / "units" / "unit_0002.png").is_file()
    assert (tmp_path / "rep" / "features" / "tally.csv").is_file()


def test_cache_and_resume(planted_root, monkeypatch):
    model = Planted()
    cfg = DissectConfig(normalize="none", progress=False, batch_size=8, checkpoint_every=2)
    expect = run.dissect(model, ["features"], planted_root,
                         DissectConfig(normalize="none", progress=False, cache=False))["features"]
    calls = {"n": 0}
    original = Planted.forward

    def failing(self, x):
        calls["n"] += 1
        if calls["n"] == 29:  # in the tally pass (20 batches per pass), after its checkpoint at batch 8
            raise RuntimeError("interrupted")
        return original(self, x)

    monkeypatch.setattr(Planted, "forward", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        run.dissect(model, ["features"], planted_root, cfg)
    monkeypatch.setattr(Planted, "forward", original)
    counted = {"n": 0}

    def counting(self, x):
        counted["n"] += 1
        return original(self, x)

    monkeypatch.setattr(Planted, "forward", counting)
    got = run.dissect(model, ["features"], planted_root, cfg)["features"]
    assert counted["n"] == 20 - 8  # pass 1 cached, pass 2 resumed after its 8th batch
    np.testing.assert_array_equal(got.iou, expect.iou)
    counted["n"] = 0
    run.dissect(model, ["features"], planted_root, cfg)
    assert counted["n"] == 0  # fully cached


def test_clear_errors(planted_root, tmp_path):
    with pytest.raises(ParamError, match="valid names"):
        run.dissect(Planted(), ["nope"], planted_root, NONE)
    with pytest.raises(ParamError, match="broden_root"):
        run.dissect(Planted(), ["features"], tmp_path / "missing", NONE)
    with pytest.raises(DataError, match="no rows of split 'train'"):
        run.dissect(Planted(), ["features"], planted_root,
                    DissectConfig(normalize="none", progress=False, split="train"))
    with pytest.raises(ParamError, match="union_rule"):
        DissectConfig(union_rule="pixel")
    with pytest.raises(ParamError, match="quantile"):
        DissectConfig(quantile=0.0)
    with pytest.raises(ParamError, match="normalize"):
        DissectConfig(normalize="places")
    with pytest.raises(ParamError, match="categories"):
        DissectConfig(categories=[])


def test_notebook_config_checks_up_front():
    with pytest.raises(ParamError, match="weights"):
        Config(model="resnet18", layers=["layer4"])  # the zoo trains only the concept-world nets
    with pytest.raises(ParamError, match="num_classes"):
        Config(model="resnet18", weights="w.pth", layers=["layer4"])
    with pytest.raises(ParamError, match="layers"):
        Config(layers="nope")
    with pytest.raises(ParamError, match="gallery_unit"):
        Config.from_params({"gallery_unit": 3})
    assert isinstance(Config(), DissectConfig) and Config().categories is None


def test_tallies_of_two_halves_merge_to_the_whole(planted_root):
    """Pass 2's counts and top maps over two disjoint halves, merged, equal one pass over all images."""
    res = run.dissect(Planted(), ["features"], planted_root, NONE)["features"]
    ds = broden.BrodenDataset(planted_root)
    model = Planted()
    x_all = torch.from_numpy(np.stack([ds.load_image(i) for i in range(len(ds))])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        acts = model(x_all)
    top = torch.from_numpy(res.top_images)

    def tally(indices):
        stat = method.UnitTally(torch.tensor(res.thresholds, dtype=torch.float32), torch.from_numpy(ds.labelcat),
                                top, tuple(acts.shape[-2:]))
        for start in range(0, len(indices), 16):
            idx = indices[start:start + 16]
            _, seg, scal, _ = broden.collate([ds[i] for i in idx])
            stat.add(acts[idx], seg, scal, torch.tensor(idx))
        return stat

    first, second = tally(list(range(0, 70))), tally(list(range(70, len(ds))))
    first.merge(second)
    merged = first.result()
    np.testing.assert_array_equal(merged["inter"], res.intersection)
    np.testing.assert_array_equal(merged["act_cat"], res.activation)
    np.testing.assert_array_equal(merged["truth"], res.truth)
    np.testing.assert_array_equal(merged["top_maps"], res.top_maps)
    assert merged["inter"].sum() > 0


def test_world_broden_is_cached_and_normalised_as_the_world():
    world = WorldConfig(image_size=32, n_train=0, n_val=12, n_test=0)
    root = run.world_broden(world, progress=False)
    assert broden.is_world_export(root) and len(broden.BrodenDataset(root)) == 12
    stamp = (root / "index.csv").stat().st_mtime_ns
    assert run.world_broden(world, progress=False) == root and (root / "index.csv").stat().st_mtime_ns == stamp
    assert run.mean_std("auto", root) == run.mean_std("world") != run.mean_std("auto", None)
