"""What every method analyses: the scale table, Data (one or two sources) and load_subject's refusals."""

import pytest

from helpers.data import CLASSES, cifar_jpeg_archive, cifar_npz
from netanatomy import subject
from netanatomy.errors import DataError, ParamError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "cache"))


def test_training_and_evaluation_sources_are_named_and_checked(tmp_path):
    archive = tmp_path / "mini.tar.gz"
    cifar_jpeg_archive(archive)
    d = subject.load_data("cifar10_jpeg", archive, eval_dataset="cifar10", eval_root=cifar_npz(tmp_path / "t.npz"),
                          normalize="imagenet", progress=False)
    assert len(d.train) == 9 and len(d.val) == 6 and d.classes == list(CLASSES) and d.input_size == 32
    assert d.label == "CIFAR-10 (JPEG) train, CIFAR-10 test[0:6]"
    assert d.key()["eval_dataset"] == "cifar10" and len(d.key()["source"]) == 2
    other = subject.load_data("cifar10_jpeg", archive, eval_dataset="cifar10", progress=False,
                              eval_root=cifar_npz(tmp_path / "o.npz", classes=("cat", "dog", "emu")))
    with pytest.raises(DataError, match="not those of the training data"):
        other.val
    with pytest.raises(ParamError, match="'eval_root'"):
        subject.load_data("cifar10_jpeg", archive, eval_dataset="cifar10")
    with pytest.raises(ParamError, match="'eval_dataset'"):
        subject.load_data("concept_world", eval_dataset="cifar10")


def test_real_data_without_weights_is_refused_unless_asked(tmp_path):
    archive = tmp_path / "mini.tar.gz"
    cifar_jpeg_archive(archive)
    with pytest.raises(ParamError, match="'weights'.*random network"):
        subject.load_subject("resnet20", "cifar10_jpeg", archive, None, progress=False)
    s = subject.load_subject("resnet20", "cifar10_jpeg", archive, None, progress=False, allow_untrained=True)
    assert s.untrained and s.weights is None and len(s.classes) == 3
    with pytest.raises(ParamError, match="'num_classes'"):
        subject.load_subject("resnet20", None, weights=str(tmp_path / "w.pt"))
    with pytest.raises(ParamError, match="'data_root'"):
        subject.load_data("cifar10_jpeg")
    with pytest.raises(ParamError, match="'scale'"):
        subject.scale("huge")
