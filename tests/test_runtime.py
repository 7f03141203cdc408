"""Shared runtime helpers: path resolution, weight fingerprints, cache keys, atomic writes."""

import pytest
import torch

from netanatomy import models, runtime


def test_resolve_path_prefers_cwd_then_repo_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.txt").write_text("x")
    assert runtime.resolve_path("here.txt") == tmp_path.joinpath("here.txt").relative_to(tmp_path)
    assert runtime.resolve_path("params/concept_world.yaml") == runtime.repo_root() / "params" / "concept_world.yaml"
    assert runtime.resolve_path(tmp_path / "abs") == tmp_path / "abs"
    assert runtime.resolve_path(None) is None
    # a checkpoint path relative to the repository root is found from any working directory
    with pytest.raises(Exception, match="checkpoint file not found"):
        models.read_checkpoint("params/no-such-file.pt")


def test_weights_fingerprint_tracks_values_dtype_and_names():
    a, b = models.build("resnet20", 10), models.build("resnet20", 10)
    b.load_state_dict(a.state_dict())
    assert runtime.weights_fingerprint(a) == runtime.weights_fingerprint(b)
    with torch.no_grad():
        b.linear.bias[0] += 1e-6
    assert runtime.weights_fingerprint(a) != runtime.weights_fingerprint(b)
    assert runtime.weights_fingerprint(a) != runtime.weights_fingerprint(a.to(torch.bfloat16))


def test_cache_key_is_order_free_and_value_sensitive():
    assert runtime.cache_key(a=1, b=[1, 2]) == runtime.cache_key(b=[1, 2], a=1)
    assert runtime.cache_key(a=1) != runtime.cache_key(a=2)


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    class FailsHalfway:
        def to_csv(self, target, **kwargs):
            open(target, "w").write("partial")
            raise RuntimeError("disk full")

    path = tmp_path / "out.csv"
    runtime.atomic_write_text(path, "complete\n")
    with pytest.raises(RuntimeError, match="disk full"):
        runtime.atomic_write_csv(FailsHalfway(), path)
    assert path.read_text() == "complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]  # no temporary file left behind
