from pathlib import Path

import pytest
import torch

from netanatomy import data, models
from netanatomy.train import predict
from netanatomy.errors import DataError, ParamError


def test_cifar_resnet20_layout_matches_published_keys():
    m = models.build("resnet20", 10)
    keys = set(m.state_dict())
    assert "conv1.weight" in keys and "linear.weight" in keys and "layer3.2.bn2.running_mean" in keys
    assert sum(p.numel() for p in m.parameters()) == 269722  # the 0.27M of He et al. (akamaster layout)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["small_vgg", "small_resnet"])
def test_small_nets_forward_and_presets(name):
    m = models.build(name, 7, width_mult=0.5)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert models.resolve_layers(m, name, "nad")


def test_load_weights_with_and_without_module_prefix(tmp_path):
    src = models.build("resnet20", 10)
    state = src.state_dict()
    for i, obj in enumerate([state, {"state_dict": {f"module.{k}": v for k, v in state.items()}, "best_prec1": 1.0}]):
        path = tmp_path / f"w{i}.th"
        torch.save(obj, path)
        dst = models.build("resnet20", 10)
        models.load_weights(dst, path)
        for k, v in state.items():
            assert torch.equal(dst.state_dict()[k], v), k


def test_load_weights_mismatch_lists_keys(tmp_path):
    state = models.build("resnet20", 10).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["linear.bias"]
    with pytest.raises(DataError) as err:
        models.load_weights(models.build("resnet20", 10), state)
    assert "linear.bias" in str(err.value) and "extra.weight" in str(err.value)
    with pytest.raises(DataError, match="shape"):
        models.load_weights(models.build("resnet20", 100), models.build("resnet20", 10).state_dict())
    with pytest.raises(DataError, match="not found"):
        models.load_weights(models.build("resnet20", 10), tmp_path / "missing.th")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_damaged_weights_file_is_one_line_naming_it(tmp_path, content):
    """A user's truncated (or empty) weights file: one DataError naming the file, even when torch's own
    exception has no message (issue 12, item 2)."""
    full = tmp_path / "full.th"
    torch.save(models.build("resnet20", 10).state_dict(), full)
    path = tmp_path / "damaged.th"
    path.write_bytes(content or full.read_bytes()[:0])
    with pytest.raises(DataError) as err:
        models.load_weights(models.build("resnet20", 10), path)
    text = str(err.value)
    assert str(path) in text and "cannot be read as a torch checkpoint" in text and "\n" not in text


def test_unknown_model_and_layer_errors():
    with pytest.raises(ParamError, match="unknown model 'resnet1000'.*small_vgg"):
        models.build("resnet1000", 10)
    m = models.build("small_vgg", 10)
    with pytest.raises(ParamError, match="no layer named 'features.conv9'.*features.conv1"):
        models.resolve_layers(m, "small_vgg", ["features.conv9"])


def test_torchvision_presets_exist_in_models():
    for name, count in (("vgg16", 13), ("resnet50", 17), ("densenet121", 8)):
        m = models.build(name, 5)
        assert len(models.resolve_layers(m, name, "nad")) == count


def test_head_swap_and_pooled_features():
    m = models.build("resnet20", 10).eval()
    name, lin = models.head(m)
    assert name == "linear" and lin.out_features == 10
    x = torch.randn(3, 3, 32, 32)
    f, logits = models.pooled_features(m, x)
    assert f.shape == (3, 64)
    torch.testing.assert_close(lin(f), logits)
    models.set_head(m, torch.nn.Linear(64, 4))
    assert m(x).shape == (3, 4)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: Correct predictions of the published akamaster CIFAR ResNets on CIFAR-10 test[0:1000] (original
#: pixels, ImageNet mean/std as the checkpoints were trained), counted by this repository. The
#: checkpoints' own `best_prec1` (full test set): 91.78 / 92.78 / 93.14 / 93.62 % (../shared/data/README.md).
PUBLISHED_CIFAR = {"resnet20": ("resnet20-12fca82f.th", 915), "resnet32": ("resnet32-d509ac18.th", 928),
                   "resnet44": ("resnet44-014dd654.th", 933), "resnet56": ("resnet56-4bfd9763.th", 926)}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED_CIFAR))
def test_published_cifar_resnets_reproduce_their_accuracy_on_test_first1000(name):
    weights, correct = PUBLISHED_CIFAR[name]
    files = [SHARED / "weights" / weights, SHARED / "cifar10" / "cifar10_test_first1000.npz"]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        pytest.skip(f"shared files absent: {', '.join(missing)}")
    ds = data.get_dataset("cifar10", files[1], split="test", normalize="imagenet")
    logits, labels = predict(models.build(name, 10, weights=files[0]), ds, device="cpu")
    assert int((logits.argmax(1) == labels).sum()) == correct
