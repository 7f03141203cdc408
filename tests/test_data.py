"""Data sets and loaders: ImageFolder (RGB conversion), Places365 re-foldering, CIFAR-10, splits."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.data import CLASSES, cifar_jpeg_archive
from netanatomy import data as D
from netanatomy import world as W
from netanatomy.errors import DataError, ParamError

REPO = Path(__file__).resolve().parents[1]
SHARED_NPZ = REPO.parent / "shared" / "data" / "cifar10" / "cifar10_test_first1000.npz"
TINY_WORLD = W.WorldConfig(seed=2, image_size=32, n_train=20, n_val=20, n_test=10)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- transforms

def test_transforms_shapes_and_normalisation():
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    small = Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    for name in ("imagenet", "places365", "imagefolder"):
        assert D.transforms_for(name, True)(big).shape == (3, 224, 224)
        assert D.transforms_for(name, False)(big).shape == (3, 224, 224)
        assert D.transforms_for(name, False, image_size=112)(big).shape == (3, 112, 112)
    assert D.transforms_for("cifar10", True)(small).shape == (3, 32, 32)
    x = D.transforms_for("cifar10", False)(small)
    torch.testing.assert_close(x[:, 0, 0], (128 / 255 - torch.tensor(D.CIFAR10_MEAN)) / torch.tensor(D.CIFAR10_STD))
    # the akamaster ResNet-20 wants ImageNet statistics on CIFAR images: selectable by the caller
    x = D.transforms_for("cifar10", False, normalize="imagenet")(small)
    torch.testing.assert_close(x[:, 0, 0], (128 / 255 - torch.tensor(D.IMAGENET_MEAN)) / torch.tensor(D.IMAGENET_STD))
    x = D.transforms_for("cifar10", False, normalize=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))(small)
    torch.testing.assert_close(x, torch.full((3, 32, 32), (128 / 255 - 0.5) / 0.5))
    x = D.transforms_for("cifar10", False, normalize=False)(small)
    torch.testing.assert_close(x, torch.full((3, 32, 32), 128 / 255))
    w = D.transforms_for("concept_world", True, image_size=32)(small)
    assert w.shape == (3, 32, 32)
    torch.testing.assert_close(w[:, 5, 5], (128 / 255 - torch.tensor(W.MEAN)) / torch.tensor(W.STD))
    with pytest.raises(ParamError, match="dataset"):
        D.transforms_for("mnist", True)
    with pytest.raises(ParamError, match="normalize"):
        D.transforms_for("cifar10", False, normalize=(1, 2))
    with pytest.raises(ParamError, match="normalize"):
        D.transforms_for("cifar10", False, normalize="svhn")


# ----------------------------------------------------------------------------- ImageFolder

def _save(path: Path, img: Image.Image, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


def test_image_folder_converts_every_mode_to_rgb(tmp_path):
    root = tmp_path / "tree"
    _save(root / "train" / "a_cmyk" / "x.jpg", Image.new("CMYK", (20, 10), (0, 255, 255, 0)), quality=100)
    rgba = Image.new("RGBA", (20, 10), (10, 200, 30, 77))
    _save(root / "train" / "b_rgba" / "x.png", rgba)
    _save(root / "train" / "c_grey" / "x.png", Image.new("L", (20, 10), 100))
    pal = Image.new("P", (20, 10), 1)
    pal.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    _save(root / "train" / "d_pal" / "x.png", pal, transparency=0)
    _save(root / "train" / "e_grey16" / "x.png", Image.fromarray(np.full((10, 20), 65535, np.uint16)))
    _save(root / "train" / "f_rgb" / "x.jpg", Image.new("RGB", (20, 10), (1, 2, 3)))
    ds = D.image_folder(root, "train")
    assert ds.classes == ["a_cmyk", "b_rgba", "c_grey", "d_pal", "e_grey16", "f_rgb"]
    got = {}
    for img, label in ds:
        assert img.mode == "RGB" and img.size == (20, 10)
        got[ds.classes[label]] = np.asarray(img)[5, 5].astype(int)
    assert got["a_cmyk"][0] > 200 and got["a_cmyk"][1:].max() < 60  # cyan-free, magenta+yellow: red
    np.testing.assert_array_equal(got["b_rgba"], [10, 200, 30])
    np.testing.assert_array_equal(got["c_grey"], [100, 100, 100])
    np.testing.assert_array_equal(got["d_pal"], [250, 10, 10])
    np.testing.assert_array_equal(got["e_grey16"], [255, 255, 255])
    # with a transform the tensors stack into a batch
    ds = D.image_folder(root, "train", transform=D.transforms_for("imagefolder", False, image_size=16))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=6)))
    assert batch[0].shape == (6, 3, 16, 16)


def test_image_folder_errors_name_path_and_layout(tmp_path):
    with pytest.raises(DataError) as err:
        D.image_folder(tmp_path / "nowhere", "val")
    assert str(tmp_path / "nowhere" / "val") in str(err.value) and "<class>" in str(err.value)
    (tmp_path / "flat" / "val").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "val" / "a.jpg")
    with pytest.raises(DataError, match="no class subfolders") as err:
        D.image_folder(tmp_path / "flat", "val")
    assert str(tmp_path / "flat" / "val") in str(err.value)
    (tmp_path / "empty" / "val" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        D.image_folder(tmp_path / "empty", "val")
    with pytest.raises(DataError) as err:
        D.get_dataset("imagenet", tmp_path / "missing_imagenet", split="val")
    assert "missing_imagenet" in str(err.value) and "sorted folder order" in str(err.value)
    with pytest.raises(DataError, match="needs a root"):
        D.get_dataset("places365", None, split="val")


# ----------------------------------------------------------------------------- Places365

def _fake_places(tmp_path: Path):
    val_dir = tmp_path / "val_256"
    val_dir.mkdir()
    labels = [2, 0, 1, 2, 0, 1]
    lines = []
    for i, lab in enumerate(labels, 1):
        name = f"Places365_val_{i:08d}.jpg"
        Image.new("RGB", (8, 8), (40 * lab, 0, 0)).save(val_dir / name)
        lines.append(f"{name} {lab}")
    (tmp_path / "places365_val.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "categories_places365.txt").write_text("/a/airfield 0\n/b/bakery/shop 1\n/c/canyon 2\n")
    return val_dir, labels


def test_refolder_places365_val(tmp_path):
    val_dir, labels = _fake_places(tmp_path)
    out = D.refolder_places365_val(val_dir, tmp_path / "places365_val.txt", tmp_path / "places",
                                   tmp_path / "categories_places365.txt", progress=False)
    assert out == tmp_path / "places" / "val"
    ds = D.get_dataset("places365", tmp_path / "places", split="val", image_size=8)
    assert ds.classes == ["airfield", "bakery-shop", "canyon"]
    by_name = {Path(p).name: t for p, t in ds.samples}
    assert [by_name[f"Places365_val_{i:08d}.jpg"] for i in range(1, 7)] == labels
    # idempotent
    assert D.refolder_places365_val(val_dir, tmp_path / "places365_val.txt", tmp_path / "places",
                                    tmp_path / "categories_places365.txt", progress=False) == out
    # without a categories file: zero-padded indices (sorted order == index), copies on request
    out2 = D.refolder_places365_val(val_dir, tmp_path / "places365_val.txt", tmp_path / "places_idx",
                                    copy=True, progress=False)
    ds2 = D.image_folder(out2.parent, "val")
    assert ds2.classes[:3] == ["000", "001", "002"] and len(ds2.classes) == 365
    assert sorted(t for _, t in ds2.samples) == sorted(labels)
    assert not (out2 / "000" / "Places365_val_00000002.jpg").is_symlink()


def test_refolder_places365_errors(tmp_path):
    val_dir, _ = _fake_places(tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("Places365_val_00000001.jpg 2\nPlaces365_val_00000002.jpg\n")
    with pytest.raises(DataError, match="line 2") as err:
        D.refolder_places365_val(val_dir, bad, tmp_path / "o1", progress=False)
    assert str(bad) in str(err.value)
    missing = tmp_path / "missing.txt"
    missing.write_text("Places365_val_00000099.jpg 1\n")
    with pytest.raises(DataError, match="Places365_val_00000099.jpg"):
        D.refolder_places365_val(val_dir, missing, tmp_path / "o2", progress=False)
    with pytest.raises(DataError, match="not found"):
        D.refolder_places365_val(val_dir, tmp_path / "nope.txt", tmp_path / "o3", progress=False)
    cats = tmp_path / "cats.txt"
    cats.write_text("/a/airfield 0\n/b/bakery zero\n")
    with pytest.raises(DataError, match="line 2"):
        D.refolder_places365_val(val_dir, tmp_path / "places365_val.txt", tmp_path / "o4", cats, progress=False)
    assert not (tmp_path / "o4" / "val").exists()


# ----------------------------------------------------------------------------- CIFAR-10

def _write_cifar(folder: Path, per_batch: int = 4, seed: int = 0) -> dict:
    """A tiny cifar-10-batches-py folder in the real format (python-2 style pickles, bytes keys)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [f"f{i}.png".encode() for i in range(per_batch)]}, fh, protocol=2)
        written[name] = (data, labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, fh, protocol=2)
    return written


def test_cifar10_pickle_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    written = _write_cifar(folder)
    train = D.cifar10(folder, "train")
    assert len(train) == 20 and train.images.shape == (20, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.classes[0] == "airplane" and train.classes[-1] == "truck"
    data, labels = written["data_batch_2"]
    np.testing.assert_array_equal(train.images[4:8], data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert train.targets[4:8] == labels
    # channel order: the first 1024 values are the red plane
    assert train.images[4, 0, 0, 0] == data[0, 0] and train.images[4, 0, 0, 1] == data[0, 1024]
    assert len(D.cifar10(tmp_path, "train")) == 20  # the parent folder (torchvision layout) works too
    test = D.get_dataset("cifar10", folder, split="val")  # 'val' means test
    assert len(test) == 4 and test.targets == written["test_batch"][1]
    x, y = test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == test.targets[0]
    img, _ = D.cifar10(folder, "test")[1]
    np.testing.assert_array_equal(np.asarray(img), test.images[1])


def test_cifar10_errors_name_path(tmp_path):
    with pytest.raises(DataError) as err:
        D.cifar10(tmp_path / "absent", "train")
    assert str(tmp_path / "absent") in str(err.value) and "data_batch_1" in str(err.value)
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        D.cifar10(folder, "train")
    assert len(D.cifar10(folder, "test")) == 4  # the test split does not need it
    (folder / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DataError, match="test_batch"):
        D.cifar10(folder, "test")
    with pytest.raises(ParamError, match="split"):
        D.cifar10(folder, "holdout")


def test_cifar10_npz_tiny(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 12).astype(np.int64)
    classes = np.array(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])
    path = tmp_path / "sub.npz"
    np.savez(path, images=images, labels=labels, labels_all10000=labels, classes=classes)
    ds = D.cifar10_npz(path)
    assert type(ds) is type(D.cifar10(_cifar_dir(tmp_path), "test"))
    np.testing.assert_array_equal(ds.images, images.transpose(0, 2, 3, 1))  # stored CHW, exposed HWC
    assert ds.targets == labels.tolist() and ds.classes == classes.tolist()
    sub = D.cifar10_npz(path, indices=[3, 5])
    np.testing.assert_array_equal(sub.images[1], images[5].transpose(1, 2, 0))
    ds = D.get_dataset("cifar10", path, split="test", normalize="imagenet")
    assert ds[0][0].shape == (3, 32, 32)
    with pytest.raises(ParamError, match="split"):
        D.get_dataset("cifar10", path, split="train")
    with pytest.raises(DataError, match="nothere.npz"):
        D.cifar10_npz(tmp_path / "nothere.npz")


def _cifar_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    if not folder.exists():
        _write_cifar(folder)
    return folder


def test_cifar10_npz_shared_file():
    if not SHARED_NPZ.is_file():
        pytest.skip(f"shared CIFAR-10 subset not present at {SHARED_NPZ}")
    ds = D.get_dataset("cifar10", SHARED_NPZ, split="test", train_aug=False)
    assert len(ds) == 1000 and ds.images.shape == (1000, 32, 32, 3)
    assert ds.classes[0] == "airplane" and ds.classes[-1] == "truck"
    with np.load(SHARED_NPZ) as z:
        assert ds.targets == z["labels_all10000"][:1000].tolist()
    assert np.bincount(ds.targets, minlength=10).min() > 50
    # a natural image: neighbouring pixels correlate (so the CHW -> HWC transpose is right)
    img = ds.images[:50].astype(float)
    assert np.corrcoef(img[:, :, :-1].ravel(), img[:, :, 1:].ravel())[0, 1] > 0.8


# ----------------------------------------------------------------------------- entry point

def test_get_dataset_concept_world_and_errors():
    ds = D.get_dataset("concept_world", split="val", world=TINY_WORLD, progress=False)
    assert isinstance(ds, W.ConceptWorld) and ds.transform is None and len(ds) == 20
    aug = D.get_dataset("concept_world", split="train", world=TINY_WORLD, progress=False)
    assert aug.transform is not None and aug[0][0].shape == (3, 32, 32)
    resized = D.get_dataset("concept_world", split="test", world=TINY_WORLD, image_size=48, progress=False)
    assert resized[0][0].shape == (3, 48, 48)
    with pytest.raises(ParamError, match="valid names: concept_world"):
        D.get_dataset("mnist")
    with pytest.raises(ParamError, match="split"):
        D.get_dataset("concept_world", split="dev", world=TINY_WORLD)
    with pytest.raises(ParamError, match="world"):
        D.get_dataset("concept_world", world={"seed": 1})


# ----------------------------------------------------------------------------- loaders and splits

def test_make_loader_is_seeded():
    ds = torch.utils.data.TensorDataset(torch.arange(50))

    def order(seed):
        return torch.cat([b[0] for b in D.make_loader(ds, 7, shuffle=True, seed=seed)]).tolist()

    assert order(1) == order(1) and order(1) != order(2)
    assert sorted(order(3)) == list(range(50))
    assert torch.cat([b[0] for b in D.make_loader(ds, 7)]).tolist() == list(range(50))
    assert len(D.make_loader(ds, 7, drop_last=True)) == 7
    with pytest.raises(ParamError, match="batch_size"):
        D.make_loader(ds, 0)


def test_split_indices_and_subset():
    fit, ev = D.split_indices(100, 0.3, seed=0)
    assert len(fit) == 30 and len(ev) == 70 and not set(fit) & set(ev)
    assert sorted([*fit, *ev]) == list(range(100))
    again = D.split_indices(100, 0.3, seed=0)
    np.testing.assert_array_equal(fit, again[0])
    assert not np.array_equal(fit, D.split_indices(100, 0.3, seed=1)[0])
    labels = np.repeat(np.arange(10), 100)
    fit, ev = D.split_indices(1000, n_fit=500, seed=0, labels=labels)
    assert len(fit) == 500 and not set(fit) & set(ev)
    assert (np.bincount(labels[fit], minlength=10) == 50).all()
    with pytest.raises(ParamError):
        D.split_indices(10, fraction=1.5)
    with pytest.raises(ParamError):
        D.split_indices(10, fraction=0.5, n_fit=3)
    with pytest.raises(ParamError):
        D.split_indices(10, n_fit=10)
    base = D.ArrayDataset(np.zeros((6, 4, 4, 3), np.uint8), [0, 1, 2, 0, 1, 2], ["a", "b", "c"])
    sub = D.Subset(base, [1, 2, 5])
    assert sub.classes == ["a", "b", "c"] and sub.targets == [1, 2, 2] and len(sub) == 3
    assert sub[1][1] == 2


# ----------------------------------------------------------------------------- CIFAR-10 as JPEG

def test_cifar10_jpeg_archive_reads_in_class_and_file_order(tmp_path):
    archive = tmp_path / "mini.tar.gz"
    expected = cifar_jpeg_archive(archive)
    train = D.get_dataset("cifar10_jpeg", archive, split="train", train_aug=False, normalize=False)
    test = D.get_dataset("cifar10_jpeg", archive, split="val")
    assert train.classes == list(CLASSES) and len(train) == 9 and len(test) == 6
    assert train.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    np.testing.assert_allclose(train.images[:, 16, 16, 0].astype(int), expected["train"], atol=3)  # JPEG rounding
    x, y = train[4]
    assert x.shape == (3, 32, 32) and y == 1
    # decoded once: a second read comes from the cache even when the archive is gone
    moved = tmp_path / "elsewhere.tar.gz"
    archive.rename(moved)
    assert len(D.cifar10_jpeg(moved, "train", progress=False)) == 9


def test_cifar10_jpeg_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    cifar_jpeg_archive(bad, damaged="train/bird/0001.jpg")
    with pytest.raises(DataError, match=r"bad.tar.gz:train/bird/0001.jpg: is not a readable JPEG"):
        D.cifar10_jpeg(bad, "train", progress=False)
    named = tmp_path / "cifar10_jpeg.tar.gz"  # the shared archive's name with other content
    cifar_jpeg_archive(named)
    with pytest.raises(DataError, match="not the published"):
        D.cifar10_jpeg(named, "train", progress=False)
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="cannot be read as a tar archive"):
        D.cifar10_jpeg(tmp_path / "junk.tar.gz", "test", progress=False)
    with pytest.raises(DataError, match="not found"):
        D.cifar10_jpeg(tmp_path / "missing.tar.gz")


@pytest.mark.slow
def test_shared_cifar10_jpeg_archive():
    archive = REPO.parent / "shared" / "data" / "cifar10" / "cifar10_jpeg.tar.gz"
    if not archive.exists() or not SHARED_NPZ.exists():
        pytest.skip(f"shared file absent: {archive if not archive.exists() else SHARED_NPZ}")
    test = D.cifar10_jpeg(archive, "test", progress=False)
    assert len(test) == 10_000 and np.bincount(test.targets).tolist() == [1000] * 10
    # test/<class>/0000.jpg is the first image of that class in the official test order
    with np.load(SHARED_NPZ) as z:
        labels, images = z["labels_all10000"], z["images"]
    for c in range(10):
        k = int(np.flatnonzero(labels == c)[0])
        if k < 1000:
            diff = test.images[c * 1000].astype(float) - images[k].transpose(1, 2, 0)
            assert 10 * np.log10(255 ** 2 / (diff ** 2).mean()) > 24  # the same picture, JPEG-coded


def test_truncated_image_in_a_folder_is_one_line_naming_it(tmp_path):
    root = tmp_path / "tree" / "train"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / c / "0.png")
    good = (root / "b" / "0.png").read_bytes()
    (root / "b" / "1.png").write_bytes(good[: len(good) // 2])
    ds = D.image_folder(tmp_path / "tree", "train")
    with pytest.raises(DataError, match=r"b/1.png: is not a readable image"):
        [ds[i] for i in range(len(ds))]
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1)  # re-raised from a worker process
    with pytest.raises(DataError) as info:
        list(loader)
    assert str(info.value).startswith(str(root / "b" / "1.png")) and "\n" not in str(info.value)


def test_fingerprint_changes_with_any_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"1")
    before = D.fingerprint(tmp_path)
    assert D.fingerprint(tmp_path) == before
    (tmp_path / "a" / "x.png").write_bytes(b"22")
    assert D.fingerprint(tmp_path) != before
    after_edit = D.fingerprint(tmp_path)
    (tmp_path / "a" / "y.png").write_bytes(b"3")
    assert D.fingerprint(tmp_path) != after_edit


def test_missing_npz_is_named_as_missing_not_as_test_only(tmp_path):
    with pytest.raises(DataError, match="npz file not found"):
        D.get_dataset("cifar10", tmp_path / "absent.npz", split="train")
