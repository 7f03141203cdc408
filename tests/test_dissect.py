"""Network Dissection: planted detectors, vectorised tally == brute force, quantiles, invariants, tally.csv."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netanatomy import broden, dissect
from netanatomy.errors import DataError, ParamError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "cache"))


NONE = dissect.DissectConfig(normalize="none", progress=False, batch_size=16)

# ----------------------------------------------------------------------------- planted data and model
# Images 32 px: channel 0 holds the object id * 60 inside rare 8x8 squares (about 0.5% of pixels each), channel 2 is 250 inside the
# squares of material 300 (else below 200), channel 1 is noise. Scene (401/402) is a whole-image label.
OBJECTS = {1: "disk", 2: "star", 3: "ring"}


def _planted_data(n=160, size=32, seed=0, side=8, p=0.08):
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size, 3), np.uint8)
    images[..., 1] = rng.integers(0, 256, (n, size, size))
    images[..., 2] = rng.integers(0, 200, (n, size, size))
    obj = np.zeros((n, size, size), np.int64)
    mat = np.zeros((n, size, size), np.int64)
    for i in range(n):
        for lab in (1, 2, 3):
            if rng.random() < p:
                y, x = rng.integers(0, size - side, 2)
                obj[i, y:y + side, x:x + side] = lab
        if rng.random() < p:
            y, x = rng.integers(0, size - side, 2)
            mat[i, y:y + side, x:x + side] = 300
    images[..., 0] = (obj * 60).astype(np.uint8)
    images[..., 2] = np.where(mat > 0, 250, images[..., 2])
    scene = rng.choice([401, 402], size=n)
    labels = {"object": [(k, v) for k, v in OBJECTS.items()], "material": [(300, "metal")],
              "scene": [(401, "kitchen-s"), (402, "street-s")]}
    return images, labels, {"object": obj, "material": mat}, {"scene": scene}


class Planted(nn.Module):
    """Unit k is the 4x4-pooled indicator of concept pi(k) (read from the pixels), or pooled noise."""

    # (channel, value) per unit; None = a noise unit
    UNITS = [None, (0, 120), (2, 250), None, (0, 60), (0, 180), None]
    TRUTH = [None, ("object", "star"), ("material", "metal"), None, ("object", "disk"), ("object", "ring"), None]

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.features = nn.Identity()

    def forward(self, x):
        v = torch.round(x * 255)
        # noise: a smooth random field from the noise channel (independent of every label)
        noise = F.avg_pool2d(F.avg_pool2d(x[:, 1:2], 4), 3, 1, 1)[:, 0]
        maps = []
        for spec in self.UNITS:
            if spec is None:
                maps.append(noise + 0.01 * len(maps))
            else:
                maps.append(F.avg_pool2d((v[:, spec[0]] == spec[1]).float()[:, None], 4)[:, 0])
        feats = torch.stack(maps, 1) * self.scale
        # a tiny position-dependent ramp breaks ties between equal pooled values
        ramp = torch.linspace(0, 1e-4, feats.shape[-1], device=x.device)
        return self.features(feats + ramp.view(1, 1, 1, -1) * (feats > 0))


@pytest.fixture
def planted_root(tmp_path):
    images, labels, pix, scal = _planted_data()
    return broden.write_broden(tmp_path / "planted", images, labels, pix, scal, progress=False)


def test_planted_units_are_found(planted_root):
    res = dissect.dissect(Planted(), ["features"], planted_root, NONE)["features"]
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

def _brute_force(acts, thresholds, ds, rule):
    """Per image, per unit Python loop in the way NetDissect-Lite tallies."""
    n, units = acts.shape[:2]
    c = ds.num_labels
    cats = ds.labelcat.argmax(1)  # category of each label index (row 0 unused)
    inter = np.zeros((units, c))
    act_cat = np.zeros((units, ds.labelcat.shape[1]))
    truth = np.zeros(c)
    for i in range(n):
        seg, scal = ds.load_segmentation(i)
        sh, sw = seg.shape[-2:]
        for lab in seg.ravel():
            if lab:
                truth[lab - 1] += 1
        for lab in scal:
            truth[lab - 1] += sh * sw
        held = {cats[lab] for lab in np.unique(np.concatenate([seg.ravel(), scal])) if lab}
        up = F.interpolate(torch.from_numpy(acts[i:i + 1]), size=(sh, sw), mode="bilinear",
                           align_corners=False)[0].numpy()
        for u in range(units):
            mask = up[u] > thresholds[u]
            size = int(mask.sum())
            under = set()
            for layer in seg:
                for lab in layer[mask]:
                    if lab:
                        inter[u, lab - 1] += 1
                        under.add(cats[lab])
            for lab in scal:
                inter[u, lab - 1] += size
                under.add(cats[lab])
            for k in (held if rule == "image" else (under if size else set())):
                act_cat[u, k] += size
    return inter, act_cat, truth


class RandomConv(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 5, stride=4, padding=2)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("rule", ["image", "lite"])
def test_vectorised_tally_equals_brute_force(tmp_path, rule):
    images, labels, pix, scal = _planted_data(n=10, size=16, seed=3)
    root = broden.write_broden(tmp_path / "tiny", images, labels, pix, scal, progress=False)
    model = RandomConv()
    cfg = dissect.DissectConfig(normalize="none", progress=False, batch_size=4, union_rule=rule, quantile=0.05,
                                tally_chunk=5 * 64 * 2)  # chunks of 2 images exercise the chunking
    res = dissect.dissect(model, ["conv"], root, cfg)["conv"]
    ds = broden.BrodenDataset(root)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        acts = model(x).numpy()
    # thresholds: numpy's quantile over all positions of all images, exactly
    flat = acts.transpose(1, 0, 2, 3).reshape(acts.shape[1], -1)
    np.testing.assert_allclose(res.thresholds, np.quantile(flat, 0.95, axis=1), rtol=1e-6, atol=1e-6)
    inter, act_cat, truth = _brute_force(acts, res.thresholds.astype(np.float32), ds, rule)
    np.testing.assert_array_equal(res.intersection, inter)
    np.testing.assert_array_equal(res.activation, act_cat)
    np.testing.assert_array_equal(res.truth, truth)
    assert inter.sum() > 0 and act_cat.sum() > 0
    label_cat = ds.labelcat[1:].argmax(1)
    np.testing.assert_allclose(res.iou, dissect.iou_from_counts(inter, act_cat, truth, label_cat))


def test_quantile_share_and_sampled_quantile():
    torch.manual_seed(1)
    acts = torch.randn(40, 6, 9, 9) * torch.arange(1, 7).view(1, 6, 1, 1)
    n = 40 * 81
    cfg = dissect.DissectConfig(progress=False)
    p = dissect._LayerPass1(6, (9, 9), 40, cfg, "cpu", 0)
    for start in range(0, 40, 7):
        p.add(acts[start:start + 7], torch.arange(start, min(start + 7, 40)))
    r = p.result(0.005)
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
    cfg = dissect.DissectConfig(progress=False, quantile_method="sample", max_buffer=300)
    p = dissect._LayerPass1(3, (16, 16), 400, cfg, "cpu", 0)
    for start in range(0, 400, 50):
        p.add(big[start:start + 50], torch.arange(start, start + 50))
    r = p.result(0.005)
    assert r["method"] == "sample" and p.buffer.values.shape[1] <= 300
    share = (big.permute(1, 0, 2, 3).reshape(3, -1) > r["thresholds"][:, None]).float().mean(1)
    assert torch.all((share - 0.005).abs() < 0.005 * 0.3), share  # ~5 sigma of the stated error


def test_invariants_and_duplication(tmp_path):
    images, labels, pix, scal = _planted_data(n=40, size=16, seed=5)
    root = broden.write_broden(tmp_path / "one", images, labels, pix, scal, progress=False)
    dup = broden.write_broden(tmp_path / "two", np.concatenate([images, images]), labels,
                              {k: np.concatenate([v, v]) for k, v in pix.items()},
                              {k: np.concatenate([v, v]) for k, v in scal.items()}, progress=False)
    model = RandomConv()
    for rule in ("image", "lite"):
        cfg = dissect.DissectConfig(normalize="none", progress=False, union_rule=rule, quantile=0.02)
        a = dissect.dissect(model, ["conv"], root, cfg)["conv"]
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
        inter, act_cat, truth, _ = dissect.tally_batch(acts, torch.tensor(a.thresholds, dtype=torch.float32),
                                                        batch[1], batch[2], torch.from_numpy(ds2.labelcat), rule)
        np.testing.assert_array_equal(inter.numpy(), 2 * a.intersection)
        np.testing.assert_allclose(dissect.iou_from_counts(inter.numpy(), act_cat.numpy(), truth.numpy(), cat), iou)
        # and the whole method on the duplicated set (its own thresholds) gives the same IoU
        b = dissect.dissect(model, ["conv"], dup, cfg)["conv"]
        np.testing.assert_allclose(b.iou, iou, atol=0.02)


def test_tally_csv_format_and_reader(planted_root, tmp_path):
    res = dissect.dissect(Planted(), ["features"], planted_root, NONE)
    t = res["features"].tally
    cats = ["object", "material", "scene"]
    expect = ["unit", "category", "label", "score"] + [f"{c}-{f}" for c in cats
                                                       for f in ("label", "truth", "activation", "intersect", "iou")]
    assert list(t.columns) == expect
    assert sorted(t["unit"]) == list(range(1, 8))
    assert list(t["score"]) == sorted(t["score"], reverse=True)
    assert (t["label"] != "").all() and (t["object-label"] != "").all()
    paths = dissect.save_results(res, tmp_path / "out")
    back = dissect.read_tally(paths["features"])
    pd.testing.assert_frame_equal(back[expect[:4]], t[expect[:4]], check_dtype=False)
    assert dissect.tally_summary(back) == res["features"].summary()
    # a published-style tally with an empty label in a category
    pub = t.copy()
    pub.loc[0, "scene-label"] = ""
    pub.sample(frac=1, random_state=0).to_csv(tmp_path / "pub.csv", index=False)
    got = dissect.read_tally(tmp_path / "pub.csv")
    assert list(got["score"]) == sorted(got["score"], reverse=True) and (got["scene-label"] != "").all()
    with pytest.raises(DataError, match="lacks column"):
        pd.DataFrame({"unit": [1]}).to_csv(tmp_path / "bad.csv", index=False)
        dissect.read_tally(tmp_path / "bad.csv")


def test_report_is_written(planted_root, tmp_path):
    res = dissect.dissect(Planted(), ["features"], planted_root, NONE)
    page = dissect.write_report(res, tmp_path / "rep", planted_root, progress=False)
    text = page.read_text()
    assert "4/7 units covering 4 concepts with IoU &ge; 0.04" in text
    assert (tmp_path / "rep" / "features" / "units" / "unit_0002.png").is_file()
    assert (tmp_path / "rep" / "features" / "tally.csv").is_file()


def test_cache_and_resume(planted_root, monkeypatch):
    model = Planted()
    cfg = dissect.DissectConfig(normalize="none", progress=False, batch_size=8, checkpoint_every=2)
    expect = dissect.dissect(model, ["features"], planted_root,
                             dissect.DissectConfig(normalize="none", progress=False, cache=False))["features"]
    calls = {"n": 0}
    original = Planted.forward

    def failing(self, x):
        calls["n"] += 1
        if calls["n"] == 29:  # in the tally pass (20 batches per pass), after its checkpoint at batch 8
            raise RuntimeError("interrupted")
        return original(self, x)

    monkeypatch.setattr(Planted, "forward", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        dissect.dissect(model, ["features"], planted_root, cfg)
    monkeypatch.setattr(Planted, "forward", original)
    counted = {"n": 0}

    def counting(self, x):
        counted["n"] += 1
        return original(self, x)

    monkeypatch.setattr(Planted, "forward", counting)
    got = dissect.dissect(model, ["features"], planted_root, cfg)["features"]
    assert counted["n"] == 20 - 8  # pass 1 cached, pass 2 resumed after its 8th batch
    np.testing.assert_array_equal(got.iou, expect.iou)
    counted["n"] = 0
    dissect.dissect(model, ["features"], planted_root, cfg)
    assert counted["n"] == 0  # fully cached


def test_clear_errors(planted_root, tmp_path):
    with pytest.raises(ParamError, match="valid names"):
        dissect.dissect(Planted(), ["nope"], planted_root, NONE)
    with pytest.raises(ParamError, match="broden_root"):
        dissect.dissect(Planted(), ["features"], tmp_path / "missing", NONE)
    with pytest.raises(DataError, match="no rows of split 'train'"):
        dissect.dissect(Planted(), ["features"], planted_root,
                        dissect.DissectConfig(normalize="none", progress=False, split="train"))
    with pytest.raises(ParamError, match="union_rule"):
        dissect.DissectConfig(union_rule="pixel")
    with pytest.raises(ParamError, match="quantile"):
        dissect.DissectConfig(quantile=0.0)
    with pytest.raises(ParamError, match="normalize"):
        dissect.DissectConfig(normalize="places")
