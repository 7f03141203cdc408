"""Heterogeneity hypothesis (netanatomy.hetero): hypernetwork convs, search, shrink, materialise, FLOPs,
the notebook's config, the cached runs and the command line (also under torchrun)."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from helpers.hetero import CIFAR, IMNET, TensorData, closest_ratio, imnet_arch, searched, tiny_data
from netanatomy import cli, hooks, params, stats
from netanatomy.errors import ParamError
from netanatomy.hetero import method as H
from netanatomy.hetero import run as R

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cifar():
    arch = H.arch_for(CIFAR)
    return arch, searched(CIFAR, arch)


@pytest.fixture(scope="module")
def imnet():
    arch = imnet_arch()
    return arch, searched(IMNET, arch)


def test_generated_kernel_shape():
    for k, cin, cout in ((3, 5, 7), (1, 6, 4), (7, 3, 8)):
        spec = H.ConvSpec("c", "c", "bn", "a", "b", k, 1, (4, 4), True)
        conv = H.HyperConv(spec, cin, cout, embedding_dim=3)
        w = conv.kernel(torch.randn(cin), torch.randn(cout))
        assert w.shape == (cout, cin, k, k)
        # slicing the hypernetwork equals slicing its output (what materialisation relies on)
        ii, io = torch.tensor([0, 2]), torch.tensor([1, 3])
        zi, zo = torch.randn(cin), torch.randn(cout)
        full = conv.kernel(zi, zo)
        part = conv.kernel(zi[ii], zo[io], ii, io)
        assert part.shape == (2, 2, k, k)
        assert torch.allclose(part, full[io][:, ii], atol=1e-6)


@pytest.mark.parametrize("which", ["cifar", "imnet"])
@pytest.mark.parametrize("mode", H.SCORES)
def test_materialised_equals_masked_hypernetwork(which, mode, request):
    arch, hyper = request.getfixturevalue(which)
    cfg = CIFAR if which == "cifar" else IMNET
    res = H.shrink(arch, H.channel_scores(hyper, mode, seed=0), cfg)
    assert any(res.counts[v] < n for v, n in arch.vectors.items())       # something was pruned
    net = H.materialise(hyper, res.masks).eval()
    x = torch.randn(3, 3, cfg.input_size, cfg.input_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = H.masked_forward(hyper, res.masks, x)
        b = net(x)
        unmasked = hyper(x)
    scale = a.abs().max().clamp_min(1e-6)
    assert ((a - b).abs().max() / scale).item() < 1e-4
    assert ((a - unmasked).abs().max() / scale).item() > 1e-3              # masking did change the output


def test_convs_sharing_a_stage_vector_keep_identical_channels(cifar):
    arch, hyper = cifar
    res = H.shrink(arch, H.channel_scores(hyper, "random", seed=3), CIFAR)
    writers = {}
    for s in arch.convs:
        writers.setdefault(s.vout, []).append(s.name)
    gates = {name: res.masks[m.vout].float() for name, m in hyper.hyper_convs().items()}
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(), hooks.channel_gates(hyper, gates, capture=list(gates)) as t:
        hyper(x)
    for v in ("stage1", "stage2", "stage3"):
        assert len(writers[v]) >= 2
        alive = [tuple((t[n].abs().sum((0, 2, 3)) > 0).nonzero().squeeze(1).tolist()) for n in writers[v]]
        kept = tuple(res.masks[v].nonzero().squeeze(1).tolist())
        assert all(set(a) <= set(kept) for a in alive)
    # in the materialised net every conv writing a stage has that stage's kept width, the stem included
    net = H.materialise(hyper, res.masks)
    assert net.conv1.out_channels == res.counts["stage1"]
    for s in arch.convs:
        if s.vout.startswith("stage"):
            assert hooks.get_module(net, s.weight).out_channels == res.counts[s.vout]


def test_floors_respected_and_unreachable_target_reported(cifar):
    arch, hyper = cifar
    cfg = dataclasses.replace(CIFAR, ratio=0.01, remain_percentage=0.5, linear_percentage=0.75)
    res = H.shrink(arch, H.channel_scores(hyper, "magnitude"), cfg)
    floor = H.floors(arch, 0.5, 0.75)
    assert not res.reached and "did NOT reach" in res.message and "floors" in res.message
    for v, n in arch.vectors.items():
        assert res.counts[v] >= floor[v]
        assert floor[v] == (n if v == "input" else max(1, int(n * (0.75 if v == "stage3" else 0.5))))
    assert res.counts["input"] == 3
    assert res.counts == floor                   # a tiny target drives every vector down to its floor


@pytest.mark.parametrize("ratio", [0.15, 0.23, 0.4, 0.6, 0.9, 1.0])
def test_binary_search_lands_within_tolerance_or_reports(cifar, ratio):
    arch, hyper = cifar
    cfg = dataclasses.replace(CIFAR, ratio=ratio, remain_percentage=0.1, linear_percentage=0.1)
    for mode in H.SCORES:
        res = H.shrink(arch, H.channel_scores(hyper, mode), cfg)
        true_ratio = H.analytic_flops(arch, res.counts) / H.analytic_flops(arch)
        assert res.ratio == pytest.approx(true_ratio)
        assert (res.trace["phase"] == "upstream").sum() <= cfg.max_iter
        # brute force over every breakpoint of the threshold: is the target reachable at all?
        best = closest_ratio(arch, H.channel_scores(hyper, mode), H.floors(arch, 0.1, 0.1), ratio)
        if res.reached:
            assert abs(res.ratio - ratio) <= cfg.tolerance
        else:
            assert "did NOT reach" in res.message
            assert best > cfg.tolerance                        # failure is reported only when no threshold works
            assert abs(res.ratio - ratio) == pytest.approx(best)   # and the closest configuration is returned
        assert res.reached == (best <= cfg.tolerance)


def test_higher_threshold_never_keeps_more(cifar):
    arch, hyper = cifar
    floor = H.floors(arch, 0.3, 0.45)
    for mode in H.SCORES:
        scores = H.channel_scores(hyper, mode)
        top = max(float(s.max()) for s in scores.values())
        prev_counts, prev_flops = None, None
        for t in torch.linspace(0, top * 1.1, 40).tolist():
            counts = H.counts_of(H.masks_at(scores, floor, t))
            flops = H.analytic_flops(arch, counts)
            if prev_counts is not None:
                assert all(counts[v] <= prev_counts[v] for v in counts)
                assert flops <= prev_flops
            prev_counts, prev_flops = counts, flops
        assert prev_counts == floor or all(prev_counts[v] >= floor[v] for v in floor)


def test_flop_counter_agrees_with_analytic(cifar, imnet):
    for arch, hyper, cfg in ((*cifar, CIFAR), (*imnet, IMNET)):
        res = H.shrink(arch, H.channel_scores(hyper, "gradient"), cfg)
        size = arch.input_size
        for net, counts in ((H.build_network(arch), None), (H.materialise(hyper, res.masks), res.counts)):
            assert stats.count_flops(net, (1, 3, size, size)) == H.analytic_flops(arch, counts)
            assert stats.count_params(net) == H.analytic_params(arch, counts)


def test_width_two_gives_about_four_times_the_flops():
    for model, depth, size in (("cifar_resnet", 20, 32), ("cifar_resnet", 56, 32), ("imagenet_resnet", 50, 224)):
        one = H.analytic_flops(H.architecture(model, depth, 1.0, 10, size))
        two = H.analytic_flops(H.architecture(model, depth, 2.0, 10, size))
        assert 3.8 < two / one <= 4.0
    # the materialised CIFAR ResNet-20 counts the same under torch.utils.flop_counter
    a1, a2 = H.architecture("cifar_resnet", 20, 1.0, 10, 32), H.architecture("cifar_resnet", 20, 2.0, 10, 32)
    r = stats.count_flops(H.build_network(a2)) / stats.count_flops(H.build_network(a1))
    assert 3.8 < r <= 4.0


def test_resnet50_is_torchvision_compatible():
    arch = H.architecture("imagenet_resnet", 50, 1.0, 1000, 224)
    mine = H.build_network(arch).state_dict()
    ref = torchvision.models.resnet50(weights=None).state_dict()
    assert set(mine) == set(ref)
    assert all(mine[k].shape == ref[k].shape for k in ref)
    assert H.analytic_flops(arch) == 8_178_368_512                 # 4.09 G multiply-adds, as usually quoted
    assert H.analytic_params(arch) == 25_557_032


def test_fixed_seed_reproduces_configuration():
    arch = H.arch_for(CIFAR)
    out = []
    for seed in (0, 0, 1):
        hyper = searched(CIFAR, arch, seed=seed)
        out.append({m: H.shrink(arch, H.channel_scores(hyper, m, seed=seed), CIFAR) for m in H.SCORES})
    for m in H.SCORES:
        assert out[0][m].counts == out[1][m].counts
        assert all(torch.equal(out[0][m].masks[v], out[1][m].masks[v]) for v in arch.vectors)
    assert any(out[0][m].masks[v].tolist() != out[2][m].masks[v].tolist() for m in H.SCORES for v in arch.vectors)


def test_nothing_calls_cuda_on_cpu(monkeypatch):
    def boom(*_a, **_k):
        raise AssertionError("CUDA was called")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "_lazy_init", boom)
    monkeypatch.setattr(torch.Tensor, "cuda", boom)
    arch = H.arch_for(CIFAR)
    hyper = H.HyperResNet(arch, 2)
    H.search(hyper, tiny_data(), CIFAR, batch_size=16, seed=0, device="auto", progress=False)
    res = H.shrink(arch, H.channel_scores(hyper.eval(), "magnitude"), CIFAR)
    net = H.materialise(hyper, res.masks)
    assert next(net.parameters()).device.type == "cpu"


@pytest.mark.parametrize("field,value", [("ratio", 0.0), ("ratio", 1.5), ("ratio", -0.2), ("width_mult", 0.5),
                                         ("remain_percentage", -0.1), ("remain_percentage", 1.2),
                                         ("linear_percentage", 2.0), ("score", "taylor"), ("score", ["random", "taylor"]),
                                         ("depth", 21), ("model", "vgg"), ("seeds", 0), ("epochs", 1.5),
                                         ("search_batch_size", 0), ("dataset", "mnist")])
def test_bad_parameters_stop_with_one_clear_message(field, value):
    with pytest.raises(ParamError) as info:
        R.Config.from_params({field: value})
    assert info.value.param == field
    assert "\n" not in str(info.value)


def test_config_knows_every_notebook_parameter_with_the_same_default():
    notebook = params.with_defaults("heterogeneity", {})
    cfg = R.Config.from_params(notebook)
    assert sorted(R.Config.names()) == sorted(notebook)
    assert R.Config() == cfg                                     # the notebook's defaults are the config's
    assert cfg.seed_list == [0, 1] and cfg.modes == list(H.SCORES)
    assert cfg.recipe.lr == cfg.hetero(10, 32).search_lr == 0.1   # the search uses the training lr, as upstream
    with pytest.raises(ParamError, match="'width_multiplier'.*not a parameter"):
        R.Config.from_params({**notebook, "width_multiplier": 2})


def test_run_end_to_end_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path))
    data = TensorData(tiny_data(n=64))
    cfg = R.Config(depth=8, width_mult=2.0, ratio=0.3, embedding_dim=2, score=["magnitude", "random"], seeds=1,
                   epochs=1, batch_size=16, lr=0.05, weight_decay=1e-4, device="cpu", progress=False)
    exp = R.experiment(cfg, data)
    assert list(exp.runs["network"]) == ["baseline", "lw-dna", "lw-dna"]
    assert (exp.runs["flops"] == exp.runs["flops_analytic"]).all()
    lw = exp.runs[exp.runs["network"] == "lw-dna"]
    assert (lw["flops"] < exp.runs["flops"].iloc[0] * 4 * 0.3 + 1e6).all()
    acc = R.accuracy_table(exp)
    assert set(R.held(acc)) == {"magnitude", "random"}
    # every run cached once, no checkpoint left behind; a second run only reads them
    names = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "hetero").glob("*.pt"))
    assert names == ["baseline", "lwdna-magnitude", "lwdna-random", "shrunk-magnitude", "shrunk-random"]
    monkeypatch.setattr(R, "fit", lambda *a, **k: pytest.fail("a cached run was trained again"))
    monkeypatch.setattr(H, "search", lambda *a, **k: pytest.fail("a cached search was run again"))
    again = R.experiment(cfg, data)
    assert again.runs.drop(columns=["reached"]).equals(exp.runs.drop(columns=["reached"]))
    assert len(R.channel_table(exp)) == len(exp.widened_arch.convs)
    assert set(R.search_traces(exp)["score"]) == {"magnitude", "random"}


def test_torchrun_two_processes_build_the_same_lwdna_as_one(tmp_path, monkeypatch):
    """The command line under torchrun (2 CPU processes, gloo) finds the same channel configuration as one process."""
    smoke = ROOT / "params" / "heterogeneity.smoke.yaml"
    one_param = tmp_path / "one.yaml"
    one_param.write_text(smoke.read_text().replace("score: [magnitude, gradient, random]", "score: [magnitude]"))
    env = {**os.environ, "NETANATOMY_CACHE": str(tmp_path / "ddp"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           "-m", "netanatomy", "run", "heterogeneity", "-f", str(one_param)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "magnitude" in done.stdout and "hypothesis" in done.stdout
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / "single"))
    assert cli.main(["run", "heterogeneity", "-f", str(one_param)]) == 0
    for kind in ("baseline-*.pt", "lwdna-magnitude-*.pt"):
        (ddp,) = (tmp_path / "ddp" / "hetero").glob(kind)
        (single,) = (tmp_path / "single" / "hetero").glob(kind)
        assert ddp.name == single.name  # same configuration key
        a, b = (torch.load(p, weights_only=False) for p in (ddp, single))
        assert a["channels"] == b["channels"] and a["flops"] == b["flops"]


@pytest.mark.parametrize("argv,words", [
    (["run", "heterogeneity", "-p", "width_multiplier", "2"], ["'width_multiplier'", "known parameters"]),
    (["run", "heterogeneity", "-p", "ratio", "1.5"], ["'ratio'", "(0, 1]"]),
    (["run", "heterogenity"], ["'notebook'", "registered: heterogeneity"]),
    (["run", "heterogeneity", "-f", "no/such/file.yaml"], ["no/such/file.yaml", "not found"]),
])
def test_cli_stops_with_one_line_before_any_work(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and all(w in err for w in words)
    assert not (tmp_path / "hetero").exists()


def test_cli_reads_the_file_and_overrides_over_the_notebook_defaults(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setitem(cli.STEPS, "heterogeneity", seen.update)
    pfile = tmp_path / "p.yaml"
    pfile.write_text("epochs: 3\nscore: [random]\n")
    assert cli.main(["run", "heterogeneity", "-f", str(pfile), "-p", "epochs", "5", "-p", "device", "cpu",
                     "-p", "search_batch_size", "None"]) == 0
    assert seen == {**params.with_defaults("heterogeneity", {}), "epochs": 5, "score": ["random"], "device": "cpu",
                    "search_batch_size": None}
