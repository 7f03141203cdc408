"""The one caching seam: atomic results, damaged files set aside and recomputed, resumable
checkpoints, concurrent writers, folders built whole."""

import os
import subprocess
import sys

import pytest
import torch

from netanatomy import cache
from netanatomy.errors import DataError


def test_cached_computes_once_then_loads(tmp_path):
    calls = []
    path = tmp_path / "r.pt"
    compute = lambda ckpt: calls.append(1) or {"x": torch.arange(3)}  # noqa: E731
    first = cache.cached(path, compute)
    second = cache.cached(path, compute)
    assert calls == [1] and torch.equal(first["x"], second["x"])


def test_damaged_result_is_named_set_aside_and_recomputed(tmp_path):
    path = tmp_path / "r.pt"
    cache.cached(path, lambda ckpt: {"x": 1})
    path.write_bytes(path.read_bytes()[:20])  # truncated
    with pytest.warns(cache.CacheWarning, match=str(path)):
        out = cache.cached(path, lambda ckpt: {"x": 2})
    assert out == {"x": 2} and (tmp_path / "r.pt.damaged").exists()
    assert torch.load(path, weights_only=False) == {"x": 2}


def test_checkpoint_resumes_and_is_removed_when_done(tmp_path):
    path = tmp_path / "r.pt"

    def interrupted(ckpt):
        ckpt.save({"done": 3})
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.cached(path, interrupted)
    seen = []
    out = cache.cached(path, lambda ckpt: seen.append(ckpt.load()) or "finished")
    assert seen == [{"done": 3}] and out == "finished"
    assert not cache.checkpoint_of(path).path.exists()


def test_damaged_checkpoint_starts_over(tmp_path):
    ckpt = cache.checkpoint_of(tmp_path / "r.pt")
    ckpt.path.write_bytes(b"not a torch file")
    with pytest.warns(cache.CacheWarning, match="ckpt"):
        assert ckpt.load() is None


def test_disabled_cache_writes_nothing(tmp_path):
    assert cache.cached(None, lambda ckpt: ckpt.save(1) or 5) == 5
    assert list(tmp_path.iterdir()) == []


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        cache.cached(tmp_path / "r.pt", lambda ckpt: 1)
    finally:
        os.umask(old)
    assert (tmp_path / "r.pt").stat().st_mode & 0o777 == 0o644


def test_concurrent_writers_end_with_one_good_copy(tmp_path):
    script = (
        "import sys, time\nfrom netanatomy import cache\n"
        "def slow(ckpt):\n    time.sleep(1.0)\n    return {'who': sys.argv[1]}\n"
        "print(cache.cached(__import__('pathlib').Path(sys.argv[2]), slow)['who'])\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i), str(tmp_path / "r.pt")],
                              stdout=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]  # the second waited and loaded the first one's result


def test_cached_folder_reuses_replaces_and_refuses(tmp_path):
    built = []

    def build(tmp):
        built.append(1)
        (tmp / "f.txt").write_text("x")

    final = tmp_path / "out"
    cache.cached_folder(final, "k1", build)
    cache.cached_folder(final, "k1", build)
    assert built == [1] and (final / "f.txt").read_text() == "x"
    cache.cached_folder(final, "k2", build)
    assert built == [1, 1] and cache.folder_key(final) == "k2"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match="not written by netanatomy"):
        cache.cached_folder(foreign, "k", build)
    assert (foreign / "mine.txt").read_text() == "keep"
