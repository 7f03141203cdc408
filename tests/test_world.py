"""The synthetic concept world: determinism, caching, masks consistent with pixels, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from netanatomy import world as W
from netanatomy.errors import DataError, ParamError

SMALL = W.WorldConfig(seed=3, image_size=32, n_train=60, n_val=200, n_test=20)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NETANATOMY_CACHE", str(tmp_path_factory.mktemp("world_cache")))
        return W.generate(SMALL, "val", progress=False)


def test_config_validation():
    with pytest.raises(ParamError, match="image_size"):
        W.WorldConfig(image_size=8)
    with pytest.raises(ParamError, match="n_train"):
        W.WorldConfig(n_train=-1)
    with pytest.raises(ParamError, match="mix"):
        W.WorldConfig(mix=1.5)
    with pytest.raises(ParamError, match="max_objects"):
        W.WorldConfig(min_objects=3, max_objects=1)
    with pytest.raises(ParamError, match="split"):
        W.generate(SMALL, "holdout", progress=False)


def test_vocabulary_layout():
    voc = W.vocabulary()
    assert set(voc) == {"scene", "object", "part", "color", "texture", "material"}
    for cat, names in voc.items():
        assert names[0] == "-"
        assert len(set(names)) == len(names)
    assert voc["scene"][1:] == list(W.SCENES)
    assert voc["object"][1:] == list(W.SHAPES)
    assert list(W.SCENES) == sorted(W.SCENES)  # ImageFolder order == class index
    assert len(W.PARTS) >= 3 and set(W.PART_OF.values()) <= set(W.SHAPES)
    assert set(W.OBJECT_COLORS) <= set(W.COLORS)
    paired = [s for pair in W.SCENE_PAIRS for s in pair]
    assert sorted(paired) == sorted(W.SCENES)


def test_split_shapes_and_dtypes(val):
    n, s = SMALL.n_val, SMALL.image_size
    assert val.images.shape == (n, s, s, 3) and val.images.dtype == np.uint8
    assert val.labels.shape == (n,) and val.labels.dtype == np.int64
    assert set(val.masks) == set(W.PIXEL_CATEGORIES)
    for m in val.masks.values():
        assert m.shape == (n, s, s) and m.dtype == np.int16
    assert set(val.image_labels) == set(W.IMAGE_CATEGORIES)
    assert val.class_names == list(W.SCENES)
    np.testing.assert_array_equal(val.image_labels["scene"], val.labels + 1)


def test_same_seed_identical_different_seed_differs(tmp_path, monkeypatch):
    a = W.generate(SMALL, "train", progress=False)
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "other_cache"))  # regenerate from scratch
    b = W.generate(SMALL, "train", progress=False)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    for cat in W.PIXEL_CATEGORIES:
        np.testing.assert_array_equal(a.masks[cat], b.masks[cat])
    c = W.generate(W.WorldConfig(seed=4, image_size=32, n_train=60), "train", progress=False)
    assert (a.images != c.images).mean() > 0.3
    assert not np.array_equal(a.masks["object"], c.masks["object"])
    # train and val differ too
    v = W.generate(SMALL, "val", progress=False)
    assert (a.images != v.images[:60]).mean() > 0.3


def test_sample_depends_only_on_seed_split_index():
    small = W.generate(W.WorldConfig(seed=3, image_size=32, n_train=17), "train", progress=False)
    big = W.generate(SMALL, "train", progress=False)
    np.testing.assert_array_equal(small.images, big.images[:17])
    np.testing.assert_array_equal(small.labels, big.labels[:17])
    for cat in W.PIXEL_CATEGORIES:
        np.testing.assert_array_equal(small.masks[cat], big.masks[cat][:17])
    img, label, masks, tex = W.render_sample(SMALL, "train", 42)
    np.testing.assert_array_equal(img, big.images[42])
    assert label == big.labels[42] and tex == big.image_labels["texture"][42]
    np.testing.assert_array_equal(masks["part"], big.masks["part"][42])


def test_cache_is_written_and_reused(monkeypatch):
    a = W.generate(SMALL, "test", progress=False)
    path = W.cache_path(SMALL, "test")
    assert path.is_file() and path.parent.name == "world"

    def boom(*args, **kwargs):
        raise AssertionError("rendered again instead of loading the cache")

    monkeypatch.setattr(W, "_render", boom)
    b = W.generate(SMALL, "test", progress=False)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks["color"], b.masks["color"])
    nomask = W.generate(SMALL, "test", progress=False, with_masks=False)
    assert nomask.masks == {} and nomask.image_labels["texture"].shape == (SMALL.n_test,)
    # a corrupt cache file is regenerated
    path.write_bytes(b"not an npz")
    monkeypatch.undo()
    c = W.generate(SMALL, "test", progress=False)
    np.testing.assert_array_equal(a.images, c.images)


def test_masks_consistent_with_pixels(val):
    palette = np.array([(0, 0, 0)] + [W.PALETTE[c] for c in W.COLORS], np.int32)
    imgs = val.images.astype(np.int32)
    color, texture = val.masks["color"], val.masks["texture"]
    assert (color > 0).all() and (texture > 0).all()  # every pixel has a colour and a texture
    dev = np.abs(imgs - palette[color]).max(-1)
    plain = texture == W.TEXTURES.index("plain") + 1
    assert plain.mean() > 0.3
    assert dev[plain].max() <= W.COLOR_TOLERANCE
    assert dev[~plain].max() <= W.COLOR_TOLERANCE + W.TEXTURE_AMP
    # textured regions really are modulated: brightness spread is larger than for plain ones
    for cid in (W.COLORS.index("tan") + 1, W.COLORS.index("green") + 1):
        sel_plain, sel_tex = plain & (color == cid), ~plain & (color == cid)
        if sel_plain.sum() > 100 and sel_tex.sum() > 100:
            assert imgs[sel_tex].std() > imgs[sel_plain].std()


def test_object_masks_where_objects_are_drawn(val):
    obj, part, mat, color = (val.masks[c] for c in ("object", "part", "material", "color"))
    objcols = {W.COLORS.index(c) + 1 for c in W.OBJECT_COLORS}
    # object pixels carry an object colour and no material; background pixels carry a material
    assert set(np.unique(color[obj > 0])) <= objcols
    assert (mat[obj > 0] == 0).all() and (mat[obj == 0] > 0).all()
    # parts only on objects, and only on the shape that owns them
    assert (obj[part > 0] > 0).all()
    for pid, pname in enumerate(W.PARTS, 1):
        owner = W.SHAPES.index(W.PART_OF[pname]) + 1
        assert (obj[part == pid] == owner).all()
    for shape in ("star", "cross", "triangle"):  # shapes with parts are fully covered by their parts
        sid = W.SHAPES.index(shape) + 1
        assert (part[obj == sid] > 0).all()
    for shape in ("disk", "square", "ring"):
        assert (part[obj == W.SHAPES.index(shape) + 1] == 0).all()
    # every image holds at least one visible object
    assert ((obj > 0).reshape(len(obj), -1).any(1)).all()
    # the image-level texture is the most frequent texture of the visible ground and band
    texture, sky = val.masks["texture"], W.MATERIALS.index("sky") + 1
    for i in range(0, len(obj), 7):
        surface = (obj[i] == 0) & (mat[i] != sky)
        if surface.any():
            counts = np.bincount(texture[i][surface], minlength=len(W.TEXTURES) + 1)
            assert val.image_labels["texture"][i] == counts.argmax()


def test_shape_masks_geometry():
    size = 64
    for shape in W.SHAPES:
        mask, parts = W._shape_masks(shape, size, 32.0, 32.0, 20.0, 0.0)
        area = mask.mean()
        assert 0.05 < area < 0.4, shape
        ys, xs = np.nonzero(mask)
        assert abs(ys.mean() - 32) < 6 and abs(xs.mean() - 32) < 6  # drawn where asked
        if parts:
            union = np.zeros_like(mask)
            for pm in parts.values():
                assert pm.any() and not (pm & union).any() and not (pm & ~mask).any()
                union |= pm
            np.testing.assert_array_equal(union, mask)
    ring, _ = W._shape_masks("ring", size, 32.0, 32.0, 20.0, 0.0)
    assert not ring[32, 32]  # the hole
    star, parts = W._shape_masks("star", size, 32.0, 32.0, 20.0, 0.0)
    assert star[32 - 18, 32] and parts["star_tip"][32 - 18, 32]  # top tip
    assert not star[32 + 18, 32]  # between the two lower tips


def test_later_objects_occlude_earlier():
    """Painting order: a later object overwrites an earlier one in pixels and in every mask."""
    size, rng = 32, np.random.default_rng(0)
    cv = W._Canvas(size)
    cv.paint(rng, np.ones((size, size), bool), "lightblue", (0, 0, 0), "plain", None, material="sky")
    star, star_parts = W._shape_masks("star", size, 13.0, 16.0, 11.0, 0.0)
    cv.paint(rng, star, "red", (0, 0, 0), "plain", None, shape="star", parts=star_parts)
    disk, _ = W._shape_masks("disk", size, 21.0, 16.0, 8.0, 0.0)
    cv.paint(rng, disk, "blue", (0, 0, 0), "plain", None, shape="disk")
    overlap = star & disk
    assert overlap.sum() > 5 and (star & ~disk).sum() > 5
    m = cv.masks
    assert (m["object"][overlap] == W.SHAPES.index("disk") + 1).all()
    assert (m["part"][overlap] == 0).all() and (m["material"][overlap] == 0).all()
    assert (m["color"][overlap] == W.COLORS.index("blue") + 1).all()
    assert (m["object"][star & ~disk] == W.SHAPES.index("star") + 1).all()
    assert (m["part"][star & ~disk] > 0).all()
    assert (m["material"][~star & ~disk] == W.MATERIALS.index("sky") + 1).all()
    blue, red = np.array(W.PALETTE["blue"]), np.array(W.PALETTE["red"])
    assert (np.abs(cv.rgb[overlap] - blue).max(-1) <= W.SHADE_MAX).all()
    assert (np.abs(cv.rgb[star & ~disk] - red).max(-1) <= W.SHADE_MAX).all()


def test_every_category_present(val):
    voc = W.vocabulary()
    for cat in W.PIXEL_CATEGORIES:
        present = set(np.unique(val.masks[cat]).tolist()) - {0}
        assert present == set(range(1, len(voc[cat]))), (cat, sorted(set(range(1, len(voc[cat]))) - present))
    assert set(np.unique(val.image_labels["scene"])) == set(range(1, len(W.SCENES) + 1))
    tex = set(np.unique(val.image_labels["texture"]).tolist())
    assert tex <= set(range(1, len(W.TEXTURES) + 1)) and len(tex) >= 4


def test_class_balance(val):
    counts = np.bincount(val.labels, minlength=len(W.SCENES))
    assert (counts == SMALL.n_val // len(W.SCENES)).all()
    odd = W.generate(W.WorldConfig(seed=1, image_size=16, n_train=95), "train", progress=False)
    counts = np.bincount(odd.labels, minlength=len(W.SCENES))
    assert counts.min() >= 9 and counts.max() <= 10


def test_mean_std_constants():
    data = W.generate(W.WorldConfig(seed=0, image_size=64, n_train=200), "train", progress=False, with_masks=False)
    x = data.images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(x.mean(0), W.MEAN, atol=0.04)
    np.testing.assert_allclose(x.std(0), W.STD, atol=0.04)


def test_concept_world_dataset():
    ds = W.ConceptWorld("train", SMALL, progress=False)
    assert len(ds) == SMALL.n_train and ds.classes == list(W.SCENES)
    assert ds.targets == ds.labels.tolist() and isinstance(ds.targets[0], int)
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == ds.targets[3]
    expected = (torch.from_numpy(ds.images[3]).permute(2, 0, 1).float() / 255 - torch.tensor(W.MEAN).view(3, 1, 1)) \
        / torch.tensor(W.STD).view(3, 1, 1)
    torch.testing.assert_close(x, expected)
    dm = W.ConceptWorld("train", SMALL, with_masks=True, progress=False)
    x, y, masks = dm[3]
    assert set(masks) == set(W.PIXEL_CATEGORIES)
    assert all(m.dtype == torch.int64 and m.shape == (32, 32) for m in masks.values())
    np.testing.assert_array_equal(masks["object"].numpy(), dm.data.masks["object"][3])
    seen = []

    def transform(img):
        seen.append(img)
        return torch.from_numpy(np.asarray(img).copy())

    dt = W.ConceptWorld("train", SMALL, transform=transform, progress=False)
    out, _ = dt[0]
    assert isinstance(seen[0], Image.Image) and seen[0].mode == "RGB"
    np.testing.assert_array_equal(out.numpy(), ds.images[0])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert batch[0].shape == (8, 3, 32, 32)


def test_export_imagefolder_round_trip(tmp_path):
    from netanatomy.data import image_folder

    cfg = W.WorldConfig(seed=5, image_size=16, n_train=30, n_val=20)
    root = W.export_imagefolder(cfg, tmp_path / "tree", splits=("train", "val"), progress=False)
    for split in ("train", "val"):
        world = W.generate(cfg, split, progress=False, with_masks=False)
        ds = image_folder(root, split)
        assert ds.classes == list(W.SCENES)
        assert len(ds) == len(world)
        for path, target in ds.samples:
            index = int(path.rsplit("/", 1)[-1].split(".")[0])
            img, label = ds[ds.samples.index((path, target))]
            assert target == world.labels[index] == label
            np.testing.assert_array_equal(np.asarray(img), world.images[index])
    # idempotent: a second export keeps the files
    first = next((root / "val").rglob("*.png"))
    stamp = first.stat().st_mtime_ns
    W.export_imagefolder(cfg, root, splits=("val",), progress=False)
    assert first.stat().st_mtime_ns == stamp
    # another configuration replaces our own export
    cfg2 = W.WorldConfig(seed=6, image_size=16, n_val=10)
    W.export_imagefolder(cfg2, root, splits=("val",), progress=False)
    assert len(list((root / "val").rglob("*.png"))) == 10
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp folders left
    # a folder we did not write is left alone
    (tmp_path / "foreign" / "val").mkdir(parents=True)
    with pytest.raises(DataError, match="foreign"):
        W.export_imagefolder(cfg, tmp_path / "foreign", splits=("val",), progress=False)
