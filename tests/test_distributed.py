"""Heavy steps under torchrun: 2 gloo processes on CPU, launched as `python -m netanatomy run` would be
(subprocesses, smoke parameters). The 2-process NAD paths and dissection tally equal one process's,
a 2-process search killed after its first checkpoint resumes to the same paths, and the DKA runs
dealt out over 2 processes (torchrun, or launched from a notebook kernel) equal one process's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from netanatomy import dissect, distributed, dka, nad
from netanatomy.cli import literal, read_params
from netanatomy.errors import NetanatomyError
from netanatomy.models import resolve_layers
from netanatomy.params import with_defaults

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
#: the session cache's folders a 2-process run shares (trained models, worlds, Broden exports): no results
SHARED = ("zoo", "world", "broden")
NAD_SMOKE = {"epochs": "2", "sweep_betas": "[0.1]"}  # the sweep's beta is the search's: no second search


def params(notebook: str, overrides: dict[str, str]) -> dict:
    given = read_params(ROOT / "params" / f"{notebook}.smoke.yaml")
    return with_defaults(notebook, {**given, **{k: literal(v) for k, v in overrides.items()}})


def results_cache(tmp_path: Path) -> Path:
    """A cache for the 2-process run holding the session cache's models and data (linked) but no results."""
    session = Path(os.environ["NETANATOMY_CACHE"])
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in SHARED:
        (session / name).mkdir(parents=True, exist_ok=True)
        (cache / name).symlink_to(session / name, target_is_directory=True)
    return cache


def torchrun(cache: Path, notebook: str, overrides: dict[str, str]) -> subprocess.Popen:
    """`torchrun --nproc_per_node 2 -m netanatomy run <notebook> -f params/<notebook>.smoke.yaml -p ...`."""
    extra = [arg for name, value in overrides.items() for arg in ("-p", name, value)]
    env = dict(os.environ, NETANATOMY_CACHE=str(cache), OMP_NUM_THREADS="1")
    return subprocess.Popen([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "netanatomy", "run",
                             notebook, "-f", f"params/{notebook}.smoke.yaml", *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finished(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]


def nad_reference(overrides: dict[str, str]):
    """One process's search (not cached) with its subject and configuration."""
    cfg = nad.run.FindPathConfig.from_params(params("nad_findpath", overrides))
    subject = nad.run.subject_for(cfg, cfg.model)
    return subject, cfg, nad.run.find_paths(subject, cfg, cache=False)


def two_process_paths(monkeypatch, cache: Path, subject, cfg) -> nad.method.PathResult:
    """The paths the 2-process run wrote into `cache` (read, never searched here)."""
    monkeypatch.setenv("NETANATOMY_CACHE", str(cache))
    path = nad.run.paths_entry(subject, cfg, resolve_layers(subject.model, subject.name, "nad"))
    assert path.is_file(), f"the 2-process run wrote no result at {path}"
    return nad.run.find_paths(subject, cfg)


def assert_same_paths(got: nad.method.PathResult, ref: nad.method.PathResult) -> None:
    assert got.classes == ref.classes and got.layers == ref.layers and got.meta["ranks"] == 2
    for name in ref.layers:
        assert torch.equal(got.hard()[name], ref.hard()[name]), name
        # a batch mixes other classes, so sums run in another order: rounding, which accumulates over the
        # epochs (1.1e-5 seen after 12); the guarantee is the binary path above
        torch.testing.assert_close(got.logits[name], ref.logits[name], atol=1e-4, rtol=0)
    cols = ["epoch", "class", "steps", "skipped"]
    pd.testing.assert_frame_equal(got.history[cols], ref.history[cols])
    np.testing.assert_allclose(got.history["loss"], ref.history["loss"], atol=1e-4)


@pytest.mark.slow
def test_nad_paths_two_processes_equal_one(tmp_path, monkeypatch):
    subject, cfg, ref = nad_reference(NAD_SMOKE)
    cache = results_cache(tmp_path)
    finished(torchrun(cache, "nad_findpath", NAD_SMOKE))
    assert not list((cache / "nad").rglob("*.ckpt*")), "rank checkpoints left behind"
    assert_same_paths(two_process_paths(monkeypatch, cache, subject, cfg), ref)


@pytest.mark.slow
def test_killed_two_process_search_resumes(tmp_path, monkeypatch):
    overrides = {**NAD_SMOKE, "epochs": "12"}
    subject, cfg, ref = nad_reference(overrides)
    cache = results_cache(tmp_path)
    proc = torchrun(cache, "nad_findpath", overrides)
    deadline = time.monotonic() + 90
    while not list((cache / "nad").rglob("*.ckpt.rank*of2.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    ranks = list((cache / "nad").rglob("*.ckpt.rank*of2.pt"))
    results = [p for p in (cache / "nad").rglob("*.pt") if ".ckpt" not in p.name]
    assert ranks and not results, f"not killed between the first checkpoint and the result: {ranks}, {results}"
    finished(torchrun(cache, "nad_findpath", overrides))
    assert not list((cache / "nad").rglob("*.ckpt*"))
    assert_same_paths(two_process_paths(monkeypatch, cache, subject, cfg), ref)


@pytest.mark.slow
def test_dissection_two_processes_equal_one(tmp_path, monkeypatch):
    cfg = dissect.run.Config.from_params(params("dissection", {}))
    ref = dissect.run.study(cfg).results
    cache = results_cache(tmp_path)
    finished(torchrun(cache, "dissection", {"batch_size": "16"}))
    written = {p.name: p.stat().st_mtime_ns for p in (cache / "dissect").iterdir()}
    assert sorted(name.split("-")[0] for name in written) == ["pass1", "pass2"], written
    monkeypatch.setenv("NETANATOMY_CACHE", str(cache))
    got = dissect.run.study(cfg).results  # read from the 2-process run's files (checked below)
    assert {p.name: p.stat().st_mtime_ns for p in (cache / "dissect").iterdir()} == written
    for name, r in ref.items():
        g = got[name]
        np.testing.assert_array_equal(g.thresholds, r.thresholds)
        np.testing.assert_array_equal(g.top_images, r.top_images)
        for attr in ("intersection", "activation", "truth", "iou", "top_maps"):
            np.testing.assert_array_equal(getattr(g, attr), getattr(r, attr), err_msg=f"{name} {attr}")
        pd.testing.assert_frame_equal(g.tally, r.tally)


def test_thresholds_of_two_parts_merge_to_the_whole():
    """Pass 1's statistic of two blocks of images, merged, equals that of all images in one stream
    (what `dissect` does with each rank's block under torchrun); a part without images merges as nothing."""
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(40, 6, 5, 5, generator=g).round(decimals=1)  # ties, as in real activations
    idx = torch.arange(40)
    whole, first, second, empty = (dissect.method.UnitThresholds(40, 0.05, "exact", top_images=4) for _ in range(4))
    whole.add(acts, idx)
    first.add(acts[:13], idx[:13])
    second.add(acts[13:], idx[13:])
    merged = dissect.method.UnitThresholds(40, 0.05, "exact", top_images=4)
    for part in (empty, second, first):
        merged.merge(part)
    for key in ("thresholds", "top_idx", "top_val", "sampled"):
        a, b = whole.result()[key], merged.result()[key]
        assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b), key


# ---------------------------------------------------------------------------- DKA: runs dealt out over the ranks
DKA_SMOKE = {"epochs": "1", "k_sweep": "[]"}  # seeds 2: 4 runs on 2 ranks, each trained whole by one rank


def dka_runs(cache: Path, monkeypatch) -> dict[str, dict]:
    """{cache file name: saved run} of the 4 paired runs of the DKA smoke parameters in `cache`."""
    monkeypatch.setenv("NETANATOMY_CACHE", str(cache))
    cfg = dka.run.Config.from_params(params("dka", DKA_SMOKE))
    data = dka.run.load(cfg)
    paths = [dka.run.arm_path(cfg, data, k, seed) for seed in cfg.seed_list for k in (None, cfg.k)]
    assert all(p.is_file() for p in paths), f"runs missing from {cache}: {[p for p in paths if not p.is_file()]}"
    return {p.name: torch.load(p, weights_only=False) for p in paths}


@pytest.fixture(scope="module")
def dka_reference(tmp_path_factory) -> dict[str, dict]:
    """The 4 runs trained in this process, one after another, on one thread (workers 1: nothing launched)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        cache = data_cache(tmp_path_factory.mktemp("reference"))
        monkeypatch.setenv("NETANATOMY_CACHE", str(cache))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            dka.run.train_pairs(dka.run.Config.from_params(params("dka", {**DKA_SMOKE, "workers": "1"})))
        finally:
            torch.set_num_threads(threads)
        return dka_runs(cache, monkeypatch)


def data_cache(folder: Path) -> Path:
    """An empty cache sharing only the session cache's rendered worlds and Broden exports (no trained model)."""
    cache = folder / "cache"
    cache.mkdir()
    session = Path(os.environ["NETANATOMY_CACHE"])
    for name in ("world", "broden"):
        (session / name).mkdir(parents=True, exist_ok=True)
        (cache / name).symlink_to(session / name, target_is_directory=True)
    return cache


def assert_same_runs(got: dict[str, dict], ref: dict[str, dict]) -> None:
    assert sorted(got) == sorted(ref)
    for name, r in ref.items():
        g = got[name]
        assert g.get("status", "ok") == r.get("status", "ok") == "ok", name  # a zoo entry has no status
        assert list(g["model"]) == list(r["model"]), name
        for key, tensor in r["model"].items():
            assert torch.equal(g["model"][key], tensor), f"{name} {key}"
        drop = ("seconds",)  # wall time of the epoch
        assert [{k: v for k, v in row.items() if k not in drop} for row in g["history"]] == \
               [{k: v for k, v in row.items() if k not in drop} for row in r["history"]], name


@pytest.mark.slow
def test_dka_runs_dealt_over_two_processes_equal_one(tmp_path, monkeypatch, dka_reference):
    cache = data_cache(tmp_path)
    finished(torchrun(cache, "dka", DKA_SMOKE))
    assert not list(cache.rglob("*.ckpt*")), "checkpoints left behind"
    assert_same_runs(dka_runs(cache, monkeypatch), dka_reference)


@pytest.mark.slow
def test_dka_notebook_kernel_launches_torchrun_with_the_same_result(tmp_path, monkeypatch, dka_reference):
    """In a notebook kernel on CPU with workers 2, `train_pairs` launches the DKA step under torchrun
    (`distributed.launch`) and then only reads the runs it cached."""
    cache = data_cache(tmp_path)
    monkeypatch.setenv("NETANATOMY_CACHE", str(cache))
    cfg = dka.run.Config.from_params(params("dka", {**DKA_SMOKE, "workers": "2"}))
    pairs = dka.run.train_pairs(cfg)
    assert list((cache / "dissect").glob("pass2-*")), "no DKA step was launched (it dissects; train_pairs does not)"
    runs = dka_runs(cache, monkeypatch)
    assert_same_runs(runs, dka_reference)
    for pair in pairs:
        for arm in pair.both:
            for key, tensor in runs[arm.path.name]["model"].items():
                assert torch.equal(arm.model.state_dict()[key], tensor), f"{arm.label} {key}"


def test_failed_launch_stops_with_one_error_holding_its_output():
    with pytest.raises(NetanatomyError, match=r"failed with exit status \d+: ParamError: parameter 'nonsense': is not a parameter"):
        distributed.launch("dka", {"nonsense": 1}, 2)
