"""Broden format: label PNG codec, writer/reader round trip, concept-world export, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from netanatomy import broden
from netanatomy.errors import DataError, ParamError
from netanatomy.world import WorldConfig, generate


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "cache"))


def test_label_codec_round_trip_through_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 65536, size=(17, 23))
    labels[0, :4] = [0, 255, 256, 65535]
    rgb = broden.encode_labels(labels)
    assert rgb.dtype == np.uint8 and rgb.shape == (17, 23, 3)
    assert rgb[0, 2, 0] == 0 and rgb[0, 2, 1] == 1  # 256 -> R 0, G 1
    Image.fromarray(rgb).save(tmp_path / "x.png")
    back = broden.decode_labels(np.asarray(Image.open(tmp_path / "x.png")))
    np.testing.assert_array_equal(back, labels)
    with pytest.raises(ParamError):
        broden.encode_labels(np.array([[70000]]))


def test_seg_size_matches_broden():
    assert broden.seg_size(224) == 112 and broden.seg_size(227) == 113 and broden.seg_size(64) == 32


def _synthetic(n=12, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    obj = rng.choice([0, 1, 2, 3], size=(n, size, size))
    mat = np.where(rng.random((n, size, size)) < 0.3, 300, 0)
    mat[0] = 0  # an image without material: empty cell
    scene = rng.choice([401, 402], size=n)
    labels = {"object": [(1, "cat"), (2, "dog"), (3, "wood")], "material": [(300, "wood-m")],
              "scene": [(401, "kitchen-s"), (402, "street-s")]}
    return images, labels, {"object": obj, "material": mat}, {"scene": scene}


def test_writer_reader_round_trip(tmp_path):
    images, labels, pix, scal = _synthetic()
    root = broden.write_broden(tmp_path / "b", images, labels, pix, scal, progress=False)
    ds = broden.BrodenDataset(root)
    assert len(ds) == len(images) and ds.category_names == ["object", "material", "scene"]
    assert list(ds.labels["number"]) == [1, 2, 3, 300, 401, 402]
    assert list(ds.labels["category"]) == ["object"] * 3 + ["material"] + ["scene"] * 2
    index = pd.read_csv(root / "index.csv", keep_default_na=False)
    assert list(index.columns[:6]) == ["image", "split", "ih", "iw", "sh", "sw"]
    assert (index["sh"] == 8).all() and index.loc[0, "material"] == ""
    # the material PNGs use the G channel (300 = 44 + 256 * 1)
    png = np.asarray(Image.open(root / "images" / index.loc[1, "material"]))
    assert png[..., 1].max() == 1
    for i in range(len(images)):
        img, seg, sc, idx = ds[i]
        np.testing.assert_array_equal(img, images[i])
        expect_obj = broden._downsample_nearest(pix["object"][i], 8, 8)
        expect_mat = broden._downsample_nearest(pix["material"][i], 8, 8)
        layers = [ds.label_index(expect_obj)] + ([ds.label_index(expect_mat)] if expect_mat.any() else [])
        np.testing.assert_array_equal(seg, np.stack(layers))
        assert list(sc) == list(ds.label_index([scal["scene"][i]]))
    # category selection re-indexes the labels compactly
    only = broden.BrodenDataset(root, categories=["material"])
    assert list(only.labels["name"]) == ["wood-m"] and only.num_labels == 1
    seg = only[1][1]
    assert set(np.unique(seg)) <= {0, 1}


def test_primary_category_is_the_one_with_largest_coverage(tmp_path):
    images, labels, pix, scal = _synthetic()
    root = broden.write_broden(tmp_path / "b", images, labels, pix, scal, progress=False)
    lab = pd.read_csv(root / "label.csv", keep_default_na=False)
    lab.loc[lab["number"] == 3, "category"] = "material(2);object(3)"
    lab.to_csv(root / "label.csv", index=False)
    cm = pd.read_csv(root / "c_material.csv")
    cm = pd.concat([cm, pd.DataFrame([{"code": 2, "number": 3, "name": "wood", "frequency": 5,
                                       "coverage": 99.0}])])
    cm.to_csv(root / "c_material.csv", index=False)
    ds = broden.BrodenDataset(root)
    assert ds.labels.set_index("number").loc[3, "category"] == "material"
    assert ds.labels.set_index("number").loc[1, "category"] == "object"


def test_export_world_matches_world_and_is_idempotent(tmp_path):
    cfg = WorldConfig(image_size=32, n_train=0, n_val=24, n_test=0)
    root = broden.export_world(cfg, tmp_path / "w", progress=False)
    stamp = (root / "index.csv").stat().st_mtime_ns
    assert broden.export_world(cfg, root, progress=False) == root
    assert (root / "index.csv").stat().st_mtime_ns == stamp
    assert broden.is_world_export(root)
    ds = broden.BrodenDataset(root)
    assert ds.category_names == ["color", "object", "part", "material", "scene", "texture"]
    assert ds.labels["number"].max() > 255
    data = generate(cfg, "val", progress=False)
    for i in (0, 5, 23):
        img, seg, sc, _ = ds[i]
        np.testing.assert_array_equal(img, data.images[i])
        numbers = {}
        row = ds.rows[i]
        for cat, items in row.pixels.items():
            numbers[cat] = broden.decode_labels(np.asarray(Image.open(root / "images" / items[0])))
        for cat, (first, pixel, _s) in broden.WORLD_LAYOUT.items():
            if pixel:
                small = broden._downsample_nearest(data.masks[cat][i], 16, 16).astype(int)
                expect = np.where(small > 0, small + first - 1, 0)
                np.testing.assert_array_equal(numbers.get(cat, np.zeros_like(expect)), expect)
            else:
                assert row.scalars[cat] == [int(data.image_labels[cat][i]) + first - 1]
    # a different configuration replaces the export
    cfg2 = WorldConfig(image_size=32, n_train=0, n_val=10, n_test=0, seed=1)
    broden.export_world(cfg2, root, progress=False)
    assert len(broden.BrodenDataset(root)) == 10


def test_export_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="not written by netanatomy"):
        broden.export_world(WorldConfig(image_size=32, n_train=0, n_val=4, n_test=0), tmp_path / "mine",
                            progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def _fresh(tmp_path):
    images, labels, pix, scal = _synthetic(n=6)
    return broden.write_broden(tmp_path / "b", images, labels, pix, scal, progress=False)


def test_malformed_row_names_file_and_row(tmp_path):
    root = _fresh(tmp_path)
    lines = (root / "index.csv").read_text().splitlines()
    lines[3] = lines[3] + ",extra"
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"index.csv.*row 4"):
        broden.BrodenDataset(root)


def test_bad_size_field_names_row(tmp_path):
    root = _fresh(tmp_path)
    df = pd.read_csv(root / "index.csv", keep_default_na=False, dtype=str)
    df.loc[2, "sh"] = "abc"
    df.to_csv(root / "index.csv", index=False)
    with pytest.raises(DataError, match=r"row 4, column 'sh'"):
        broden.BrodenDataset(root)


def test_missing_png_names_file_and_row(tmp_path):
    root = _fresh(tmp_path)
    ds = broden.BrodenDataset(root)
    victim = root / "images" / ds.rows[2].pixels["object"][0]
    victim.unlink()
    with pytest.raises(DataError, match=r"row 4 of index.csv") as info:
        ds.load_segmentation(2)
    assert victim.name in str(info.value)


def test_unknown_category_column_and_label(tmp_path):
    root = _fresh(tmp_path)
    df = pd.read_csv(root / "index.csv", keep_default_na=False, dtype=str)
    df.rename(columns={"scene": "weather"}).to_csv(root / "index.csv", index=False)
    with pytest.raises(DataError, match="'weather' is not a category"):
        broden.BrodenDataset(root)
    df.to_csv(root / "index.csv", index=False)
    with pytest.raises(ParamError, match="categories"):
        broden.BrodenDataset(root, categories=["weather"])
    # a label number no label.csv row lists
    df.loc[1, "scene"] = "999"
    df.to_csv(root / "index.csv", index=False)
    with pytest.raises(DataError, match="label number 999"):
        broden.BrodenDataset(root)[1]


def test_wrong_root_and_empty_split(tmp_path):
    with pytest.raises(ParamError, match="broden_root"):
        broden.open_broden(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="index.csv"):
        broden.BrodenDataset(tmp_path / "empty")
    root = _fresh(tmp_path)
    with pytest.raises(DataError, match="no rows of split 'train'"):
        broden.BrodenDataset(root, split="train")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_image_or_segmentation_names_the_file(tmp_path, damage):
    root = _fresh(tmp_path)
    ds = broden.BrodenDataset(root)
    image = ds.image_path(1)
    seg = root / "images" / ds.rows[2].pixels["object"][0]
    for victim, load in ((image, lambda: ds.load_image(1)), (seg, lambda: ds.load_segmentation(2))):
        data = victim.read_bytes()
        victim.write_bytes(data[:len(data) // 2] if damage == "truncate" else b"not an image at all")
        with pytest.raises(DataError) as info:
            load()
        text = str(info.value)
        assert text.startswith(str(victim)) and "row" in text and "\n" not in text
        assert ("truncated or damaged" if damage == "truncate" else "cannot be read as an image") in text


def test_two_processes_exporting_the_world_at_once_both_succeed(tmp_path):
    """A cold cache, two processes exporting the same world into the same folder together: both
    finish without error and one complete export remains."""
    script = textwrap.dedent(f"""
        import sys
        from netanatomy import broden
        from netanatomy.world import WorldConfig
        root = broden.export_world(WorldConfig(image_size=32, n_train=0, n_val=60, n_test=0), {str(tmp_path / 'w')!r},
                                   progress=False)
        print(len(broden.BrodenDataset(root)))
    """)
    env = {**os.environ, "NETANATOMY_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert out.strip() == "60"
    assert broden.is_world_export(tmp_path / "w") and len(broden.BrodenDataset(tmp_path / "w")) == 60
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".w.")]  # no temporary folder left behind
