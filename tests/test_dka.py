"""Dynamic-K activation: the routed head's exact invariants, model surgery, checkpoints, training, paired
seeds and their verdicts, damaged caches, parameter checks, explanations."""

import dataclasses
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from helpers.cifar_sets import cifar_set, fresh_cache, interrupt_once
from helpers.dka import Planted, PlantedData, paired_interval_by_hand, reference_topk_linear, seed_rows
from netanatomy import cache, models, zoo
from netanatomy.cache import CacheWarning
from netanatomy.data import CIFAR10_MEAN, CIFAR10_STD
from netanatomy.dissect.method import tally_summary
from netanatomy.dka import figures, method, run
from netanatomy.errors import DataError, ParamError


def _layer(D=16, C=7, k=3, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    return method.TopKRouteLinear(D, C, k, **kw).to(dtype)


def test_k_equals_d_is_nn_linear():
    D, C = 24, 9
    lin = nn.Linear(D, C).double()
    layer = method.TopKRouteLinear.from_linear(lin, D)
    x = torch.randn(11, D, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    a, b = layer(x), lin(x2)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(a)
    a.backward(g)
    b.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(layer.weight.grad, lin.weight.grad)
    torch.testing.assert_close(layer.bias.grad, lin.bias.grad)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_logit_is_sum_of_exactly_k_largest_votes(k):
    layer = _layer(k=k)
    x = torch.randn(5, 16, dtype=torch.float64)
    out = layer(x)
    votes = (x[:, None, :] * layer.weight[None]).detach()
    for b in range(5):
        for c in range(7):
            srt = sorted(votes[b, c].tolist(), reverse=True)
            assert out[b, c].item() == pytest.approx(sum(srt[:k]) + layer.bias[c].item(), abs=1e-12)
            # not the sum of k - 1 or k + 1 votes (generic data: the (k+1)-th vote is non-zero)
            assert abs(out[b, c].item() - (sum(srt[:k + 1]) + layer.bias[c].item())) > 1e-9
    vals, idx = layer.route(x)
    assert vals.shape == idx.shape == (5, 7, k)
    torch.testing.assert_close(vals.sum(2) + layer.bias, out.detach())
    assert (vals[:, :, :-1] >= vals[:, :, 1:]).all()


def test_gradient_reaches_at_most_k_inputs_per_sample_and_class():
    k = 3
    layer = _layer(k=k)
    x = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    _, idx = layer.route(x.detach())
    for b in range(4):
        for c in range(7):
            gx, gw = torch.autograd.grad(layer(x)[b, c], (x, layer.weight))
            nz = gx[b].nonzero().flatten()
            assert len(nz) <= k and gx[torch.arange(4) != b].abs().sum() == 0
            assert set(nz.tolist()) <= set(idx[b, c].tolist())
            assert (gw[c] != 0).sum() <= k and gw[torch.arange(7) != c].abs().sum() == 0


def test_gradcheck_float64_away_from_ties():
    layer = _layer(D=12, C=5, k=4)
    x = torch.randn(6, 12, dtype=torch.float64, requires_grad=True)
    fn = lambda a, w, b: method._TopKRoute.apply(a, w, b, 4, 2)
    assert torch.autograd.gradcheck(fn, (x, layer.weight, layer.bias), eps=1e-6, atol=1e-7)


def test_matches_upstream_formula_and_gradients():
    layer = _layer(D=32, C=10, k=5, dtype=torch.float32)
    x = torch.rand(8, 32, requires_grad=True)          # post-ReLU features
    x2 = x.detach().clone().requires_grad_(True)
    a = layer(x)
    b = reference_topk_linear(x2, layer.weight, layer.bias, 5)
    torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(a.sum(), (x, layer.weight, layer.bias))
    gb = torch.autograd.grad(b.sum(), (x2, layer.weight, layer.bias))
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v)


def test_permuting_features_changes_nothing_and_batch_order_is_kept():
    layer = _layer(k=4)
    x = torch.randn(6, 16, dtype=torch.float64)
    out = layer(x)
    perm = torch.randperm(16)
    permuted = method.TopKRouteLinear(16, 7, 4).double()
    with torch.no_grad():
        permuted.weight.copy_(layer.weight[:, perm])
        permuted.bias.copy_(layer.bias)
    torch.testing.assert_close(permuted(x[:, perm]), out, rtol=1e-12, atol=1e-12)
    rows = torch.randperm(6)
    torch.testing.assert_close(layer(x[rows]), out[rows], rtol=1e-12, atol=1e-12)


def test_chunked_equals_unchunked():
    x = torch.randn(9, 16, dtype=torch.float64, requires_grad=True)
    outs, grads = [], []
    for chunk in (1, 3, None):
        layer = _layer(k=5, chunk_classes=chunk)
        assert layer.chunk(9) == (chunk or 7)
        out = layer(x)
        outs.append(out)
        grads.append(torch.autograd.grad(out.pow(2).sum(), (x, layer.weight, layer.bias)))
    for o, g in zip(outs[:-1], grads[:-1]):
        torch.testing.assert_close(o, outs[-1], rtol=1e-12, atol=1e-12)
        for u, v in zip(g, grads[-1]):
            torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)
    small = _layer(k=5, max_votes=2 * 16 * 9)   # memory budget of two classes per chunk
    assert small.chunk(9) == 2
    torch.testing.assert_close(small(x), outs[-1], rtol=1e-12, atol=1e-12)


def test_k_out_of_range_is_one_clear_error():
    for k in (0, 17, -1, 2.5):
        with pytest.raises(ParamError, match="'k'.*between 1 and D = 16"):
            method.TopKRouteLinear(16, 3, k)
    with pytest.raises(ParamError, match="'k'"):
        method.to_dka(models.build("small_vgg", 3, width_mult=0.25), 33)
    with pytest.raises(ParamError, match="'k'.*D = 128"):
        run.Config(k=0, k_sweep=[])
    with pytest.raises(ParamError, match="'k_sweep'.*D = 128"):
        run.Config(k_sweep=[1, 500])


def test_missing_broden_root_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="not a Broden folder.*broden_root"):
        run.Config(broden_root=str(tmp_path / "nope"), k_sweep=[])
    with pytest.raises(ParamError, match="broden_root"):
        run.Config(dataset="places365", model="resnet18", data_root=str(tmp_path), k_sweep=[])


@pytest.mark.parametrize("name,head", [("small_vgg", "fc"), ("small_resnet", "fc"), ("resnet20", "linear"),
                                       ("resnet18", "fc")])
def test_builder_swaps_the_head_of_any_model(name, head):
    torch.manual_seed(0)
    dense = models.build(name, 6).eval()
    routed = method.to_dka(models.build(name, 6), 5)
    routed.load_state_dict(dense.state_dict())            # same parameter names as nn.Linear
    hname, module = models.head(routed)
    assert hname == head and isinstance(module, method.TopKRouteLinear) and method.head_k(routed) == 5
    size = 64 if name == "resnet18" else 32
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        full = method.to_dka(models.build(name, 6), module.in_features)
        full.load_state_dict(dense.state_dict())
        torch.testing.assert_close(full.eval()(x), dense(x), rtol=1e-4, atol=1e-4)   # K = D is the dense net
        feats, _ = models.pooled_features(routed.eval(), x)
        torch.testing.assert_close(routed(x), reference_topk_linear(feats, module.weight, module.bias, 5))


def test_load_upstream_checkpoint(tmp_path):
    torch.manual_seed(1)
    src = method.build("resnet20", 10, k=3).eval()
    state = {("module.rfc." + k[len("linear."):]) if k.startswith("linear.") else "module." + k: v
             for k, v in src.state_dict().items()}
    path = tmp_path / "resnet20_fc_ma_t3.pth"
    torch.save({"epoch": 89, "best_prec1": 55.0, "state_dict": state}, path)
    assert method.k_from_mark(path.name) == 3 and method.k_from_mark("t5") == 5
    dst = method.build("resnet20", 10, k=method.k_from_mark(path.name), weights=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))
    with pytest.raises(DataError, match="upstream DKA checkpoint.*dense"):
        method.load_checkpoint(models.build("resnet20", 10), path)
    with pytest.raises(DataError, match="shape"):
        method.load_checkpoint(method.build("resnet20", 100, k=3), path)
    bad = dict(state)
    bad.pop("module.rfc.bias")
    with pytest.raises(DataError, match="missing keys.*linear.bias"):
        method.load_checkpoint(method.build("resnet20", 10, k=3), {"state_dict": bad})


def _recipe(epochs, **kw):
    return run.recipe(epochs, **{"lr": 0.05, "batch_size": 32, "device": "cpu", "progress": False, **kw})


def test_dense_and_dka_share_init_train_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path))
    data = PlantedData(256, 64)
    d0 = run.train_model("small_vgg", None, data, _recipe(0), width_mult=0.25)
    k0 = run.train_model("small_vgg", 2, data, _recipe(0), width_mult=0.25)
    for (n, a), b in zip(d0.model.state_dict().items(), k0.model.state_dict().values()):
        assert torch.equal(a, b), n                      # same trunk and head initialisation
    trained = run.train_model("small_vgg", 2, data, _recipe(4), width_mult=0.25)
    assert trained.status == "ok" and trained.val_acc >= 0.9 and len(trained.history) == 4
    assert trained.path.is_file()
    again = run.train_model("small_vgg", 2, data, _recipe(4), width_mult=0.25)
    for a, b in zip(trained.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)                         # loaded from the cache
    assert method.head_k(again.model) == 2
    # explanation identities: dense logit = sum of all contributions + bias; DKA logit = top-K sum + bias
    for t in (d0, trained):
        res = method.unit_contributions(t.model, "features.conv6", data.val, progress=False, device="cpu")
        bias = models.head(t.model)[1].bias.detach()[res["target"]]
        kept = res["contrib"] if t.k is None else res["contrib"].topk(t.k, 1).values
        torch.testing.assert_close(kept.sum(1) + bias, res["logit"], rtol=1e-4, atol=1e-4)
    with pytest.raises(ParamError, match="'layer'.*global average pool"):
        method.unit_contributions(trained.model, "features.conv4", data.val, progress=False, device="cpu")


def test_divergence_guard_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path))
    data = PlantedData(64, 32)
    recipe = _recipe(1, lr=0.1, max_loss=1e-3)
    t = run.train_model("small_vgg", 1, data, recipe, width_mult=0.25)
    assert t.status == "diverged" and "max_loss" in t.message and np.isnan(t.val_acc)
    assert run.train_model("small_vgg", 1, data, recipe, width_mult=0.25).status == "diverged"


def test_concentration_and_explanation_page():
    c = torch.tensor([[4.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [2.0, -2.0, 0.0, 0.0]])
    torch.testing.assert_close(method.concentration(c, 1), torch.tensor([1.0, 0.25, 0.5]))
    torch.testing.assert_close(method.concentration(c, 2), torch.tensor([1.0, 0.5, 0.5]))
    curve = method.concentration_curve(c, 4)     # a negative contribution lowers the cumulative share
    np.testing.assert_allclose(curve["share"], [1.75 / 3, 2 / 3, 2.25 / 3, 2 / 3], rtol=1e-6)
    torch.manual_seed(0)
    model = method.to_dka(models.build("small_vgg", 2, width_mult=0.25), 3).eval()
    val = Planted(8, 2)
    labels = pd.DataFrame({"concept": ["tl-s"] * 32, "category": ["scene"] * 32, "iou": np.linspace(0, 0.1, 32)})
    ex = figures.explain(model, "features.conv6", val, [0, 3], labels, top=5, device="cpu")
    assert len(ex) == 2 and all(len(e["units"]) == 5 for e in ex)
    shares = [u["share"] for u in ex[0]["units"]]
    assert shares == sorted(shares, reverse=True)
    page = figures.explain_page(ex, "test")
    assert page.count("unit ") >= 10 and "data:image/png;base64" in page and "tl-s" in page


def test_dissection_tables_side_by_side():
    def fake(scene, obj):
        tally = pd.DataFrame({"unit": [1, 2, 3], "category": ["scene", "object", "color"],
                              "label": ["beach-s", "disk", "red-c"], "score": [scene, obj, 0.01],
                              "scene-label": "beach-s", "object-label": "disk", "color-label": "red-c"})
        return types.SimpleNamespace(tally=tally, summary=lambda: tally_summary(tally, 0.04))
    d = {"dense": fake(0.02, 0.05), "DKA K=5": fake(0.3, 0.06)}
    table = run.dissection_table(d)
    assert list(table["model"])[:2] == ["dense", "DKA K=5"] and table["interpretable"].tolist()[:2] == [1, 2]
    assert table["scene_detectors"].tolist() == [0, 1, 307] and table["object_detectors"].tolist()[:2] == [1, 1]
    pub = table.iloc[-1]
    assert pub["interpretable"] == 441 and pub["unique_concepts"] == 230 and "published" in pub["source"]
    said = figures.describe_dissection(d, "layer4", 0.04)
    assert "DKA K=5: **2/3** units" in said and "441/512 interpretable, 230 unique concepts, 307 scene" in said
    frame = run.detectors_frame(d, 0.04)
    assert frame.set_index(["model", "category"])["detectors"].to_dict() == {
        ("dense", "scene"): 0, ("dense", "object"): 1, ("dense", "color"): 0,
        ("DKA K=5", "scene"): 1, ("DKA K=5", "object"): 1, ("DKA K=5", "color"): 0}


def test_config_composes_the_dissection_config_and_refuses_unknown_names():
    cfg = run.Config.from_params({"quantile": 0.01, "iou_threshold": 0.05, "union_rule": "image",
                                  "categories": ["object"], "batch_size": 32, "k_sweep": []})
    d = cfg.dissection
    assert (d.quantile, d.iou_threshold, d.union_rule, d.categories, d.batch_size) == (0.01, 0.05, "image",
                                                                                       ["object"], 64)
    with pytest.raises(ParamError, match="'quantile'"):
        run.Config.from_params({"quantile": 1.5, "k_sweep": []})
    with pytest.raises(ParamError, match="'union_rule'"):
        run.Config.from_params({"union_rule": "pixel", "k_sweep": []})
    with pytest.raises(ParamError, match="'top_k'.*not a parameter"):
        run.Config.from_params({"top_k": 5})
    assert run.Config(k_sweep=[1, "D", 128, None]).k_sweep == [1, None, None, None]


@pytest.mark.parametrize("name", ["dka.yaml", "dka.smoke.yaml", "dka.places365.yaml", "dka.places365_released.yaml"])
def test_parameter_sets_make_valid_configs(name, tmp_path):
    values = yaml.safe_load((Path(__file__).resolve().parents[1] / "params" / name).read_text())
    for key in ("data_root", "broden_root", "weights", "dense_weights"):
        if values.get(key):                     # real-data paths: stand-ins that exist
            path = tmp_path / key
            if key == "broden_root":
                path.mkdir()
                (path / "index.csv").write_text("image,split,ih,iw,sh,sw\n")
            else:
                path.write_text("") if key != "data_root" else path.mkdir()
            values[key] = str(path)
    cfg = run.Config.from_params(values)
    assert 1 <= cfg.k <= cfg.D and all(k is None or 1 <= k <= cfg.D for k in cfg.k_sweep)
    if "places365" in name:
        assert (cfg.model, cfg.D, cfg.layer, cfg.k) == ("resnet18", 512, "layer4", 5)
        r = cfg.recipe(cfg.seed, 90)   # upstream train.py's recipe
        u = method.UPSTREAM_RECIPE
        assert (r.lr, r.momentum, r.weight_decay, r.schedule, r.step_size, r.gamma, r.max_loss, r.label_smoothing) \
            == (u["lr"], u["momentum"], u["weight_decay"], "step", u["epochs"] // u["lr_steps"], u["gamma"],
                u["max_loss"], 0.0)
    if name == "dka.yaml":     # the default run: at least five seeds decide the claims
        assert cfg.seeds >= 5 and cfg.sweep_epochs is None


BAD_PARAMETERS = [("lr", "abc"), ("lr", 0), ("lr", None), ("epochs", -1), ("epochs", 2.5), ("seeds", 0), ("seeds", "5"),
                  ("k", 0), ("k", "5"), ("k", 129), ("k_sweep", [0]), ("k_sweep", "D"), ("sweep_epochs", 0),
                  ("schedule", "cosine"), ("weight_decay", -1e-4), ("label_smoothing", 1.0), ("batch_size", 0),
                  ("accuracy_margin", -0.1), ("accuracy_margin", "1 point"), ("width_mult", 0), ("image_size", 4),
                  ("explain_images", -1), ("layer", "features.conv4"), ("layer", "nope"), ("quantile", 0),
                  ("iou_threshold", 1.5), ("union_rule", "pixel"), ("categories", 3), ("device", "gpu"),
                  ("model", "vgg99"), ("dataset", "mnist"), ("scale", "huge"), ("seed", -1), ("progress", "yes"),
                  ("data_root", ""), ("weights", 5), ("broden_root", ""), ("workers", 0)]


@pytest.mark.parametrize("name,value", BAD_PARAMETERS, ids=lambda v: repr(v))
def test_every_parameter_is_checked_before_any_work(name, value, tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path))
    params = {"k_sweep": [], name: value}
    with pytest.raises(ParamError) as err:
        run.Config.from_params(params)
    assert err.value.param == name, str(err.value)
    assert not any(tmp_path.rglob("*.pt")) and not any(tmp_path.rglob("*.npz"))   # nothing computed
    run.Config.from_params({"k_sweep": []})          # a good config reads no data either
    assert not any(tmp_path.rglob("*.npz"))


def test_checkpoints_and_seeds_are_consistent(tmp_path):
    ckpt = tmp_path / "dka.pth"
    ckpt.write_text("")
    with pytest.raises(ParamError, match="'seeds'.*must be 1 with weights"):
        run.Config(weights=str(ckpt), k_sweep=[])
    with pytest.raises(DataError, match="missing.pth: checkpoint given as dense_weights not found"):
        run.Config(dense_weights=str(tmp_path / "missing.pth"), seeds=1, k_sweep=[])
    with pytest.raises(DataError, match="data_root not found"):
        run.Config(dataset="imagefolder", data_root=str(tmp_path / "none"), broden_root=None, k_sweep=[])


def test_verdicts_on_planted_seeds():
    """Known answers: accuracy equal within 0.1 point (held at a 1-point margin), interpretable units
    fewer by 3-5 (did not hold), concentration differences of both signs (inconclusive)."""
    dense_acc, dka_acc = [0.80, 0.82, 0.81, 0.79, 0.83], [0.801, 0.819, 0.811, 0.790, 0.831]
    values = {"val_acc": {"dense": dense_acc, "DKA": dka_acc},
              "interpretable": {"dense": [10, 12, 9, 11, 10], "DKA": [7, 8, 4, 8, 6]},
              "concentration": {"dense": [0.5, 0.4, 0.6, 0.5, 0.45], "DKA": [0.6, 0.3, 0.65, 0.4, 0.5]}}
    cfg = run.Config(k_sweep=[], accuracy_margin=0.01)
    v = run.verdicts(seed_rows(values), cfg).set_index("measure")
    assert v["verdict"].to_dict() == {"val_acc": "held", "interpretable": "did not hold",
                                      "concentration": "inconclusive"}
    for measure in values:
        mean, low, high = paired_interval_by_hand(values[measure]["DKA"], values[measure]["dense"])
        assert v.loc[measure, ["difference", "low", "high"]].tolist() == pytest.approx([mean, low, high], abs=1e-9)
    assert v.loc["val_acc", "threshold"] == -0.01 and (v["seeds"] == 5).all()
    # a margin smaller than the interval's reach below zero makes the accuracy claim inconclusive
    mean, low, _ = paired_interval_by_hand(dka_acc, dense_acc)
    tight = run.verdicts(seed_rows(values), run.Config(k_sweep=[], accuracy_margin=-low / 2))
    assert tight.set_index("measure").loc["val_acc", "verdict"] == "inconclusive"
    # a DKA worse by more than the margin in every seed: did not hold
    worse = dict(values, val_acc={"dense": dense_acc, "DKA": [a - 0.03 for a in dense_acc]})
    assert run.verdicts(seed_rows(worse), cfg).set_index("measure").loc["val_acc", "verdict"] == "did not hold"
    one = run.verdicts(seed_rows({m: {a: x[:1] for a, x in arms.items()} for m, arms in values.items()}), cfg)
    assert one["verdict"].str.startswith("not tested").all() and one["low"].isna().all()
    said = figures.describe_verdicts(v.reset_index(), 5)
    assert "DKA costs no accuracy (DKA - dense > -1.0 points)" in said and "**held**" in said
    assert "**did not hold**" in said and "**inconclusive**" in said


def test_zoo_dense_arm_and_dka_arm_share_initialisation(tmp_path, monkeypatch):
    """On the concept world the dense arm is the zoo's net; with zero epochs both arms are their
    initial weights: equal for one seed (the DKA head copies the dense head), different across seeds."""
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path))
    cfg = run.Config(scale="smoke", width_mult=0.25, k=3, k_sweep=[], seeds=2, device="cpu", progress=False)
    data = run.load(cfg)
    arms = {(k, s): run.train_arm(cfg, data, k, s, epochs=0) for k in (None, 3) for s in (0, 1)}
    assert arms[(None, 0)].path.parent.name == "zoo" and arms[(None, 0)].path == zoo.cache_path(
        "small_vgg", data.world, cfg.recipe(0, 0), 0.25)
    assert method.head_k(arms[(3, 0)].model) == 3 and method.head_k(arms[(None, 0)].model) is None
    for s in (0, 1):
        for (n, a), b in zip(arms[(None, s)].model.state_dict().items(), arms[(3, s)].model.state_dict().values()):
            assert torch.equal(a, b), n
    differ = [not torch.equal(a, b) for a, b in zip(arms[(None, 0)].model.state_dict().values(),
                                                    arms[(None, 1)].model.state_dict().values())]
    assert any(differ)


def test_damaged_cached_model_is_set_aside_and_retrained(tmp_path, monkeypatch):
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path))
    data = PlantedData(64, 32)
    first = run.train_model("small_vgg", 2, data, _recipe(1), width_mult=0.25)
    size = first.path.stat().st_size
    with open(first.path, "r+b") as fh:            # truncate the cached model file
        fh.truncate(size // 3)
    with pytest.warns(CacheWarning, match=f"{first.path.name}: damaged cache file"):
        again = run.train_model("small_vgg", 2, data, _recipe(1), width_mult=0.25)
    assert first.path.with_name(first.path.name + ".damaged").is_file() and first.path.stat().st_size > size // 2
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        torch.testing.assert_close(a, b)           # recomputed, same result on this machine
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)   # the new file reads back cleanly
        run.train_model("small_vgg", 2, data, _recipe(1), width_mult=0.25)


def test_paired_runs_launch_the_dka_step_once_on_cpu_with_workers(tmp_path, monkeypatch):
    """In a notebook kernel on CPU, `prefetch` launches the DKA step under torchrun (`distributed.launch`)
    in min(workers, missing runs) processes with parameters that build the same configuration; it
    launches nothing with workers 1, with one missing run, on CUDA or when every run is cached (the
    launched runs themselves: tests/test_distributed.py)."""
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path))
    launched = []
    monkeypatch.setattr(run.distributed, "launch", lambda *args, **kwargs: launched.append((args, kwargs)))
    cfg = run.Config(scale="smoke", width_mult=0.25, k=3, k_sweep=[1, "D"], seeds=2, epochs=1, batch_size=64,
                     device="cpu", progress=False, workers=3)
    data = run.load(cfg)
    jobs = [(k, s) for s in cfg.seed_list for k in (None, 3)]
    run.prefetch(cfg, data, jobs[:1])
    run.prefetch(dataclasses.replace(cfg, workers=1), data, jobs)
    assert launched == []
    run.prefetch(cfg, data, jobs)
    [((notebook, given, nproc), kwargs)] = launched
    assert (notebook, nproc, kwargs) == ("dka", 3, {"threads": 1}) and given["progress"] is False
    again = run.Config.from_params({**given, "progress": False})
    assert again.key() == cfg.key() and again.k_sweep == [1, None] and again.layer == cfg.layer
    monkeypatch.setattr(run, "pick_device", lambda device: torch.device("cuda"))
    run.prefetch(cfg, data, jobs)
    monkeypatch.undo()
    monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path))
    monkeypatch.setattr(run.distributed, "launch", lambda *args, **kwargs: launched.append((args, kwargs)))
    for job in jobs:  # every run cached
        run.arm_path(cfg, data, *job).parent.mkdir(parents=True, exist_ok=True)
        run.arm_path(cfg, data, *job).touch()
    run.prefetch(cfg, data, jobs)
    assert len(launched) == 1


# ---------------------------------------------------------------------------- the CIFAR-10 set (shared archive)
SMOKE_CIFAR = dict(seeds=2, epochs=1, k_sweep=[2, "D"], max_train_images=64, max_val_images=64, batch_size=32,
                   workers=1, scale="smoke", explain_images=1, progress=False, device="cpu")


@pytest.mark.slow
def test_cifar10_set_smoke_run():
    """params/dka.cifar10_resnet20.yaml on 64 training and 64 test images, 1 epoch, 2 seeds, a 2-point sweep:
    ResNet-20 (D = 64) with a K = 5 head, CIFAR-10 normalisation for the 32 px concept-world dissection."""
    cfg = run.Config.from_params(cifar_set("dka.cifar10_resnet20", **SMOKE_CIFAR))
    assert (cfg.D, cfg.k, cfg.layer) == (64, 5, "layer3")
    pairs = run.train_pairs(cfg)
    data = pairs[0].data
    assert data.label == "CIFAR-10 (JPEG), at most 64 training / 64 evaluation images" and data.key()["limits"] == [64, 64]
    assert len(data.train_aug) == len(data.val) == 64 and data.train_aug.indices == data.train.indices
    assert cfg.dissection.normalize == data.mean_std == (CIFAR10_MEAN, CIFAR10_STD)
    assert isinstance(pairs[0].dka.model.linear, method.TopKRouteLinear) and pairs[0].dka.model.linear.k == 5
    assert isinstance(pairs[0].dense.model.linear, nn.Linear)
    acc = run.accuracy_table(pairs)
    assert acc["seed"].tolist() == [0, 1] and (acc["epochs"] == 1).all()
    broden = run.broden_folder(cfg, data)
    assert broden.name.startswith("world-val-32px-")
    assert {d.summary()["units"] for d in run.dissect_pair(cfg, pairs[0], broden).values()} == {64}
    verdicts = run.verdicts(run.seed_table(cfg, pairs, broden), cfg)
    assert len(verdicts) == 3 and verdicts[["low", "high"]].notna().all().all()
    assert set(verdicts["verdict"]) <= {"held", "did not hold", "inconclusive"}
    sweep = run.k_sweep(cfg, pairs[0], broden)
    assert sweep["k"].tolist() == [2, 64] and (sweep["status"] == "ok").all()
    assert sweep["val_acc"].iloc[1] == pairs[0].dense.val_acc  # K = D is the main seed's dense run, not retrained


@pytest.mark.slow
def test_cifar10_training_resumes_after_an_interruption(tmp_path, monkeypatch):
    """A CIFAR-10 DKA run killed after epoch 1 of 2 resumes from its checkpoint: epoch 1 is not trained again."""
    P = cifar_set("dka.cifar10_resnet20", **{**SMOKE_CIFAR, "epochs": 2, "seeds": 1, "k_sweep": [],
                                              "max_train_images": 32, "max_val_images": 32})
    fresh_cache(tmp_path, monkeypatch)
    cfg = run.Config.from_params(P)
    data, recipe = run.load(cfg), cfg.recipe(cfg.seed)
    path = run.model_entry(cfg.model, cfg.k, data, recipe, cfg.width_mult)
    interrupt_once(monkeypatch, run)
    with pytest.raises(KeyboardInterrupt):
        run.train_model(cfg.model, cfg.k, data, recipe)
    saved = torch.load(cache.checkpoint_of(path).path, weights_only=False)
    assert not path.exists() and [r["epoch"] for r in saved["history"]] == [1]
    done = run.train_model(cfg.model, cfg.k, data, recipe)
    assert done.history["epoch"].tolist() == [1, 2] and path.exists()
    assert done.history["seconds"].iloc[0] == saved["history"][0]["seconds"]
    assert not cache.checkpoint_of(path).path.exists()
