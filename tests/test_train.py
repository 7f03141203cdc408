import dataclasses

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from netanatomy import models
from netanatomy.cache import Checkpoint
from netanatomy.errors import ParamError
from netanatomy.train import TrainConfig, TrainingDiverged, evaluate, fit


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    return TensorDataset(x, y)


def _net():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


CFG = TrainConfig(epochs=2, batch_size=16, lr=0.05, device="cpu", progress=False, seed=3)


def test_resume_is_exact(tmp_path):
    ds = _data()
    straight = models.build("small_vgg", 4, width_mult=0.25)
    torch.manual_seed(0)
    interrupted = models.build("small_vgg", 4, width_mult=0.25)
    interrupted.load_state_dict(straight.state_dict())
    h1 = fit(straight, ds, ds, CFG, checkpoint=Checkpoint(tmp_path / "a.pt"))
    fit(interrupted, ds, ds, CFG, checkpoint=Checkpoint(tmp_path / "b.pt"), stop_after_epoch=1)
    resumed = models.build("small_vgg", 4, width_mult=0.25)  # fresh weights: all state comes from the checkpoint
    h2 = fit(resumed, ds, ds, CFG, checkpoint=Checkpoint(tmp_path / "b.pt"))
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert h1["train_loss"].tolist() == h2["train_loss"].tolist()
    assert len(torch.load(tmp_path / "b.pt", weights_only=False)["history"]) == 2


def test_training_learns_and_evaluate():
    ds = _data(256)
    net = _net()
    before = evaluate(net, ds, device="cpu")["acc"]
    hist = fit(net, ds, ds, dataclasses.replace(CFG, epochs=15, lr=0.1))
    assert hist["val_acc"].iloc[-1] > max(before, 0.6)
    assert list(hist.columns[:4]) == ["epoch", "lr", "train_loss", "train_acc"]


def test_divergence_guard():
    with pytest.raises(TrainingDiverged, match="loss"):
        fit(_net(), _data(), None, dataclasses.replace(CFG, lr=1e6, max_loss=10.0, optimizer="sgd", momentum=0.0))


def test_bad_config_is_a_param_error():
    with pytest.raises(ParamError, match="'optimizer'"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ParamError, match="'lr'"):
        TrainConfig(lr=-1)


def _ddp_worker(rank, world, init_file, out_file):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    net = _net()
    fit(net, _data(), None, CFG)
    if rank == 0:
        torch.save(net.state_dict(), out_file)
    dist.destroy_process_group()


def test_ddp_two_processes_match_single_process(tmp_path):
    single = _net()
    fit(single, _data(), None, CFG)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt")
    for k, v in single.state_dict().items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", [16, 64, 256])
def test_onecycle_runs_at_any_length_and_peaks_at_lr(n):
    cfg = dataclasses.replace(CFG, schedule="onecycle", epochs=2, lr=0.05)
    hist = fit(_net(), _data(n), None, cfg)  # 2, 8 and 32 optimiser steps
    assert len(hist) == 2 and max(hist["lr"]) <= 0.05 + 1e-12
    if n >= 64:  # 8 or more steps, one-cycle: annealed to far below the peak by the end
        assert 0 < hist["lr"].iloc[-1] < 0.001  # the last step's rate, not the scheduler's step past the end
    else:  # too few steps for a cycle: constant
        assert hist["lr"].tolist() == [0.05, 0.05]
