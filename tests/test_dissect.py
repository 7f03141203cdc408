"""Network Dissection: planted detectors, vectorised tally == brute force (bilinear and NetDissect's
receptive-field-centred upsampling), quantiles, invariants, tally.csv, both detector countings, the
published numbers reproduced from the published tallies, cache keys, bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from helpers.dissect import (GeometryNet, Planted, RandomConv, brute_force_tally, hand_tally, lit_rows, planted_data,
                             upstream_upsample)
from netanatomy import broden
from netanatomy.dissect import figures, method, published, run, tables
from netanatomy.dissect.run import Config, DissectConfig
from netanatomy.errors import DataError, ParamError
from netanatomy.params import with_defaults
from netanatomy.world import WorldConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "dissection"


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
    labels = res.unit_labels()  # channel order, 0-based: channel k is tally unit k + 1
    assert list(labels["unit"]) == list(range(7))
    for k, truth in enumerate(Planted.TRUTH):
        row = labels.iloc[k]
        assert bool(row["detector"]) == (truth is not None)
        if truth is not None:
            assert (row["category"], row["concept"]) == truth and row["iou"] == tally.loc[k + 1, "score"]
    text = figures.describe_depth({"first": res, "last": res}, "top_label")
    assert ("detectors 4/7 (0.57) -> 4/7 (0.57); unique detectors 4 -> 4 (object 3 -> 3, material 1 -> 1; "
            "top_label counting)") in text


# ----------------------------------------------------------------------------- brute force

@pytest.mark.parametrize("rule,upsample", [("image", "bilinear"), ("lite", "bilinear"), ("image", "receptive_field")])
def test_vectorised_tally_equals_brute_force(tmp_path, rule, upsample):
    images, labels, pix, scal = planted_data(n=10, size=16, seed=3)
    root = broden.write_broden(tmp_path / "tiny", images, labels, pix, scal, progress=False)
    model = RandomConv()
    cfg = DissectConfig(normalize="none", progress=False, batch_size=4, union_rule=rule, quantile=0.05,
                        tally_chunk=5 * 64 * 2, upsample=upsample)  # chunks of 2 images exercise the chunking
    res = run.dissect(model, ["conv"], root, cfg)["conv"]
    ds = broden.BrodenDataset(root)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        acts = model(x).numpy()
    # thresholds: numpy's quantile over all positions of all images, exactly
    flat = acts.transpose(1, 0, 2, 3).reshape(acts.shape[1], -1)
    np.testing.assert_allclose(res.thresholds, np.quantile(flat, 0.95, axis=1), rtol=1e-6, atol=1e-6)
    oracle = None if upsample == "bilinear" else \
        (lambda maps, shape: upstream_upsample(((-2, -2), (5, 5), (4, 4)), maps, shape, reduction=2))
    inter, act_cat, truth = brute_force_tally(acts, res.thresholds.astype(np.float32), ds, rule, oracle)
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
    paths = tables.save_results(res, tmp_path / "out")
    back = tables.read_tally(paths["features"])
    pd.testing.assert_frame_equal(back[expect[:4]], t[expect[:4]], check_dtype=False)
    assert method.tally_summary(back) == res["features"].summary()
    # a published-style tally with an empty label in a category
    pub = t.copy()
    pub.loc[0, "scene-label"] = ""
    pub.sample(frac=1, random_state=0).to_csv(tmp_path / "pub.csv", index=False)
    got = tables.read_tally(tmp_path / "pub.csv")
    assert list(got["score"]) == sorted(got["score"], reverse=True) and (got["scene-label"] != "").all()
    with pytest.raises(DataError, match="lacks column"):
        pd.DataFrame({"unit": [1]}).to_csv(tmp_path / "bad.csv", index=False)
        tables.read_tally(tmp_path / "bad.csv")


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


def test_notebook_config_checks_up_front(planted_root, tmp_path, monkeypatch):
    """Every parameter is checked at construction, before the zoo model is loaded or trained."""
    def no_work(*args, **kwargs):
        raise AssertionError("the subject was loaded before the parameters were checked")

    monkeypatch.setattr(run, "load_subject", no_work)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    bad = [({"model": "resnet18", "layers": ["layer4"]}, "weights"),  # the zoo trains only the concept-world nets
           ({"model": "resnet18", "weights": str(weights), "layers": ["layer4"]}, "num_classes"),
           ({"model": "resnet18", "weights": str(tmp_path / "none.pth"), "num_classes": 3, "layers": ["layer4"]},
            "weights"),
           ({"layers": "nope"}, "layers"), ({"layers": ["features.conv4", "features.nope"]}, "layers"),
           ({"gallery_units": -1}, "gallery_units"), ({"gallery_units": 0}, "gallery_units"),
           ({"gallery_unit": 3}, "gallery_unit"), ({"counting": "unique"}, "counting"),
           ({"upsample": "nearest"}, "upsample"), ({"published_mat": 3}, "published_mat"),
           ({"broden_root": str(tmp_path / "missing")}, "broden_root"),
           ({"broden_root": str(planted_root), "categories": ["weather"]}, "categories"),
           ({"batch_size": 0}, "batch_size"), ({"iou_threshold": 1.5}, "iou_threshold"),
           ({"normalize": "places"}, "normalize"), ({"input_size": 4}, "input_size"),
           ({"categories": ["weather"]}, "categories"), ({"split": "train"}, "split"),
           ({"published_csvs": str(weights)}, "published_csvs"), ({"published_mat": str(tmp_path)}, "published_mat"),
           ({"world_size": 8}, "world_size"), ({"broden_root": str(planted_root), "world_size": 32}, "world_size")]
    for values, name in bad:
        with pytest.raises(ParamError, match=name):
            Config.from_params(values)
    with pytest.raises(DataError, match="no rows of split"):
        Config.from_params({"broden_root": str(planted_root), "split": "train"})
    ok = Config.from_params({"broden_root": str(planted_root), "layers": ["features.conv4"]})
    assert isinstance(ok, DissectConfig) and ok.categories is None and ok.counting == "paper"


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


# ----------------------------------------------------------------------------- counting detectors

def test_paper_and_top_label_countings_on_a_hand_tally():
    t = hand_tally()
    top = method.tally_summary(t, 0.04, counting="top_label")
    assert (top["interpretable"], top["unique_concepts"]) == (2, 2)
    assert top["per_category"] == {"object": 1, "scene": 1} and top["unique_per_category"] == {"object": 1, "scene": 1}
    paper = method.tally_summary(t, 0.04, counting="paper")
    assert (paper["interpretable"], paper["unique_concepts"]) == (2, 3)
    assert paper["per_category"] == {"object": 2, "scene": 2}
    assert paper["unique_per_category"] == {"object": 1, "scene": 2}
    # a category where a unit overlaps nothing ('-') never counts, even at threshold 0
    t.loc[2, ["scene-label", "scene-iou"]] = [method.NO_LABEL, 0.0]
    assert method.tally_summary(t, 0.0, counting="paper")["unique_per_category"]["scene"] == 2
    with pytest.raises(ValueError, match="counting"):
        method.tally_summary(t, counting="unique")


def test_summary_table_shows_both_countings(planted_root):
    res = run.dissect(Planted(), ["features"], planted_root, NONE)
    table = tables.summary_table(res, counting="paper")
    assert {"unique detectors (paper)", "unique detectors (top_label)", "object detectors"} <= set(table.columns)
    cov = tables.planted_coverage(res, counting="paper")
    assert dict(zip(cov["category"], cov["with detector"])) == {"object": 3, "material": 1, "scene": 0}


@pytest.mark.skipif(not (SHARED / "semantics_cvpr_release.mat").is_file(),
                    reason=f"NetDissect's published files are absent: {SHARED}")
def test_published_tallies_reproduce_the_paper_numbers_exactly():
    """Each published per-unit CSV counted the paper's way gives its .mat rows num_detectors and
    num_uniquedetectors exactly; method.PUBLISHED holds the same rows and the top-label counts."""
    figure = published.read_published_figure(SHARED / "semantics_cvpr_release.mat")
    assert figure["network"].nunique() == 27 and list(figure["concept"].unique()) == list(method.PUBLISHED_CONCEPTS)
    counts = published.published_counts(SHARED)
    assert sorted(counts["network"].unique()) == sorted(method.PUBLISHED_CSV.values())
    for network, pub in method.PUBLISHED.items():
        mat = figure[figure["network"] == network].set_index("concept").loc[list(method.PUBLISHED_CONCEPTS)]
        assert tuple(mat["detectors"]) == pub["detectors"] and tuple(mat["unique detectors"]) == pub["unique"]
        ours = counts[(counts["network"] == network) & (counts["counting"] == "paper")].set_index("concept")
        ours = ours.loc[list(method.PUBLISHED_CONCEPTS)]
        assert tuple(ours["detectors"]) == pub["detectors"], network
        assert tuple(ours["unique detectors"]) == pub["unique"], network
        top = counts[(counts["network"] == network) & (counts["counting"] == "top_label") & (counts["concept"] == "all")]
        assert int(top["unique detectors"].iloc[0]) == pub["unique_top_label"]
    # AlexNet/Places205 conv5 (the README's example): 79 unique detectors the paper's way, 60 by top label
    assert method.PUBLISHED["caffe_reference_places205"]["unique"][0] == 79
    table = published.load_published(SHARED / "semantics_cvpr_release.mat", SHARED).comparison()
    assert (table["unique detectors (paper, CSV)"] == table["unique detectors (.mat)"]).all() and len(table) == 35
    assert "35 of 35" in figures.describe_published(published.load_published(SHARED / "semantics_cvpr_release.mat",
                                                                             SHARED))


def test_published_readers_skip_absent_files_and_name_bad_ones(tmp_path):
    absent = published.load_published(tmp_path / "none.mat", tmp_path / "nothing")
    assert absent.figure is None and absent.counts is None and absent.comparison() is None
    assert len(absent.notes) == 2 and "none.mat" in absent.notes[0] and "published_csvs" in absent.notes[1]
    assert figures.describe_published(absent) == " ".join(absent.notes)
    (tmp_path / "bad.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="bad.mat"):
        published.read_published_figure(tmp_path / "bad.mat")


def test_cross_network_figure_stacks_and_sorts_like_upstream():
    rows = []
    for net, uniq in (("a", (1, 0, 0, 0, 0, 0)), ("b", (2, 1, 3, 0, 1, 1)), ("c", (1, 0, 0, 0, 0, 0))):
        for concept, u in zip(figures.FIGURE_CONCEPTS, uniq):
            rows.append({"network": net, "layer": "conv5", "concept": concept, "detectors": u, "unique detectors": u})
    fig = figures.plot_published_figure(pd.DataFrame(rows))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b", "a", "c"]  # by total, ties in file order
    tops = np.zeros(3)
    for patch in ax.patches:
        tops[round(patch.get_x() + patch.get_width() / 2)] = max(tops[round(patch.get_x() + patch.get_width() / 2)],
                                                                  patch.get_y() + patch.get_height())
    np.testing.assert_array_equal(tops, [8, 1, 1])
    assert ax.get_ylabel() == "Number of unique detectors"


# ----------------------------------------------------------------------------- receptive-field upsampling

def test_field_maps_equal_the_receptive_fields_read_off_lit_rows():
    model = GeometryNet()
    for layer, size, row in (("stem", 64, 8), ("block", 96, 6), ("head", 96, 6)):
        (o, _), (s, _), (t, _) = run.field_map(model, layer)
        assert lit_rows(model, layer, size, row) == (row * t + o, row * t + o + s - 1), layer
    assert run.field_map(model, "head") == ((-25, -25), (51, 51), (8, 8))
    # the paper's Caffe AlexNet conv5 (no padding in conv1): NetDissect's field map (-64, 163, 16)
    alex = nn.Sequential(nn.Conv2d(3, 2, 11, 4), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(2, 2, 5, padding=2),
                         nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))
    assert run.field_map(alex, "10") == ((-64, -64), (163, 163), (16, 16))
    with pytest.raises(ParamError, match="upsample"):
        run.field_map(nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(2), nn.Conv2d(2, 2, 1)), "2")


@pytest.mark.parametrize("fieldmap,hw,seg,r", [(((-64, -64), (163, 163), (16, 16)), (13, 13), (113, 113), 2),
                                              (((-2, -2), (5, 5), (4, 4)), (4, 5), (8, 10), 2),
                                              (((-90, -90), (196, 196), (16, 16)), (14, 14), (112, 112), 2)])
def test_receptive_field_upsampling_equals_netdissect(fieldmap, hw, seg, r):
    maps = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3) + hw).astype(np.float32))
    centre = tuple(o + s // 2 for o, s in zip(fieldmap[0], fieldmap[1]))
    grid = method.receptive_field_grid(hw, seg, centre, fieldmap[2], r)
    ours = method._upsample(maps, seg, grid).reshape(2, *seg, 3).permute(0, 3, 1, 2).numpy()
    expect = np.stack([upstream_upsample(fieldmap, m.numpy(), seg, r) for m in maps])
    np.testing.assert_allclose(ours, expect, atol=1e-5)
    assert method.receptive_field_positions(13, 17, 16, 2).tolist() == list(range(8, 112, 8))  # AlexNet at 227


# ----------------------------------------------------------------------------- data: caching and damage

def test_cache_key_covers_images_and_segmentations(planted_root, monkeypatch):
    cfg = DissectConfig(normalize="none", progress=False, batch_size=32)
    first = run.dissect(Planted(), ["features"], planted_root, cfg)["features"]
    calls = {"n": 0}
    original = Planted.forward

    def counting(self, x):
        calls["n"] += 1
        return original(self, x)

    monkeypatch.setattr(Planted, "forward", counting)
    run.dissect(Planted(), ["features"], planted_root, cfg)
    assert calls["n"] == 0  # unchanged folder: both passes from the cache
    ds = broden.BrodenDataset(planted_root)
    img = ds.load_image(0).copy()
    img[..., 0] = 120  # the star's channel value everywhere: unit 2 fires on the whole image
    Image.fromarray(img).save(ds.image_path(0))
    again = run.dissect(Planted(), ["features"], planted_root, cfg)["features"]
    assert calls["n"] > 0 and not np.array_equal(again.thresholds, first.thresholds)
    calls["n"] = 0
    seg_row = next(i for i, r in enumerate(ds.rows) if "object" in r.pixels)
    path = planted_root / "images" / ds.rows[seg_row].pixels["object"][0]
    Image.fromarray(broden.encode_labels(np.ones((16, 16), int))).save(path)  # a segmentation changed
    changed = run.dissect(Planted(), ["features"], planted_root, cfg)["features"]
    assert calls["n"] > 0 and not np.array_equal(changed.truth, again.truth)


def test_damaged_cached_pass_is_set_aside_and_recomputed(planted_root, tmp_path):
    from netanatomy.cache import CacheWarning
    cfg = DissectConfig(normalize="none", progress=False, batch_size=32)
    expect = run.dissect(Planted(), ["features"], planted_root, cfg)["features"]
    passes = sorted((tmp_path / "cache" / "dissect").glob("pass1-*.pt"))
    assert len(passes) == 1
    passes[0].write_bytes(passes[0].read_bytes()[:50])
    with pytest.warns(CacheWarning, match=passes[0].name):
        got = run.dissect(Planted(), ["features"], planted_root, cfg)["features"]
    np.testing.assert_array_equal(got.iou, expect.iou)
    assert passes[0].with_name(passes[0].name + ".damaged").is_file()


@pytest.mark.parametrize("workers", [0, 1])
def test_truncated_image_stops_with_one_line_naming_it(planted_root, workers):
    ds = broden.BrodenDataset(planted_root)
    victim = ds.image_path(5)
    victim.write_bytes(victim.read_bytes()[:100])
    cfg = DissectConfig(normalize="none", progress=False, batch_size=16, num_workers=workers, cache=False)
    with pytest.raises(DataError) as info:
        run.dissect(Planted(), ["features"], planted_root, cfg)
    text = str(info.value)
    assert str(victim) in text and "truncated or damaged" in text and "\n" not in text


# ----------------------------------------------------------------------------- parameter sets

def test_lite_normalisation_is_netdissect_lite_arithmetic():
    """Lite: RGB -> BGR, minus the BGR mean, back to RGB, divided by 255 * 0.224 (feature_operation.py)."""
    rgb = np.random.default_rng(0).integers(0, 256, (4, 4, 3)).astype(np.float32)
    bgr_mean = np.array([109.5388, 118.6897, 124.6901], np.float32)
    lite = ((rgb[..., ::-1] - bgr_mean)[..., ::-1]) / (255.0 * 0.224)
    mean, std = run.mean_std("netdissect_lite")
    np.testing.assert_allclose((rgb / 255 - np.array(mean)) / np.array(std), lite, rtol=1e-5, atol=1e-5)


def test_lite_parameter_set_is_netdissect_lites_setting(tmp_path):
    values = yaml.safe_load((ROOT / "params" / "dissection.broden224_resnet18.yaml").read_text())
    assert values["categories"] == ["object", "part", "scene", "texture", "color"]  # Lite's CATAGORIES: no material
    assert (values["union_rule"], values["upsample"], values["normalize"]) == ("lite", "bilinear", "netdissect_lite")
    cats = {c: [(i + 1 + 10 * k, f"{c}{i}") for i in range(2)] for k, c in enumerate(values["categories"])}
    images = np.zeros((4, 16, 16, 3), np.uint8)
    pix = {c: np.full((4, 16, 16), cats[c][0][0]) for c in ("object", "part", "color")}
    scal = {c: np.full(4, cats[c][0][0]) for c in ("scene", "texture")}
    root = broden.write_broden(tmp_path / "b", images, cats, pix, scal, progress=False)
    (tmp_path / "w.pth").write_bytes(b"")
    cfg = Config.from_params({**values, "broden_root": str(root), "weights": str(tmp_path / "w.pth"), "device": "cpu"})
    assert cfg.categories == values["categories"] and run.mean_std(cfg.normalize) == method.LITE_NORMALIZE
    for name in ("broden224_resnet50", "broden224_vgg16", "broden227_alexnet"):
        other = yaml.safe_load((ROOT / "params" / f"dissection.{name}.yaml").read_text())
        assert (other["union_rule"], other["upsample"], other["counting"]) == ("image", "receptive_field", "paper")


# ----------------------------------------------------------------------------- the published CIFAR-10 ResNets

WEIGHTS = ROOT.parent / "shared" / "data" / "weights"


@pytest.mark.slow
@pytest.mark.parametrize("name,blocks", [("resnet20", 3), ("resnet56", 9)])
def test_cifar_parameter_set_dissects_every_block(name, blocks, monkeypatch):
    """The CIFAR-10 set on the smoke world (200 images, 32 px): the stem and every block of the
    published net, 16/32/64 units per stage; `unit_labels` then reads the cached run (no pass
    recomputed) and refuses a layer the set does not dissect before any work."""
    values = yaml.safe_load((ROOT / "params" / f"dissection.cifar10_{name}.yaml").read_text())
    weights = ROOT / values["weights"]
    if not weights.is_file():
        pytest.skip(f"shared file absent: {weights}")
    cfg = Config.from_params(with_defaults("dissection", {**values, "scale": "smoke", "progress": False,
                                                          "device": "cpu"}))
    assert (cfg.world_size, cfg.normalize, cfg.upsample, cfg.counting) == (32, "imagenet", "receptive_field", "paper")
    study = run.study(cfg)
    stages = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(blocks)]
    assert study.layers == ["bn1"] + stages and len(broden.BrodenDataset(study.broden_root)) == 200
    assert [study.results[n].units for n in study.layers] == [16] * (1 + blocks) + [32] * blocks + [64] * blocks
    table = tables.summary_table(study.results, cfg.iou_threshold, cfg.counting)
    assert (table["detectors"] > 0).all()  # colour units at every depth (IoU >= 0.04 on 200 images)
    fig = figures.plot_depth(study.results, cfg.iou_threshold, cfg.counting)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == study.layers

    def no_pass(*args, **kwargs):
        raise AssertionError("a dissection pass was recomputed")

    monkeypatch.setattr(run, "_thresholds", no_pass)
    monkeypatch.setattr(run, "_tally", no_pass)
    labels = run.unit_labels(cfg, "layer3.0")
    expected = study.results["layer3.0"].tally.sort_values("unit")
    assert list(labels["unit"]) == list(range(64)) and list(labels["concept"]) == list(expected["label"])
    np.testing.assert_array_equal(labels["iou"], expected["score"])
    with pytest.raises(ParamError, match="layer"):
        run.unit_labels(cfg, "layer4")
