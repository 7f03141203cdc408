"""Images per second of netanatomy.train.fit against a bare forward/backward/step loop (same model, batch, data).

    .venv/bin/python benchmarks/train_throughput.py [--model small_vgg] [--size 32] [--n 2048] [--batch 128]
Prints both throughputs and their ratio (target: fit >= 0.9 x bare).
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from netanatomy import models
from netanatomy.train import TrainConfig, fit


def bare(model, ds, batch, epochs):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(ds, batch_size=batch, shuffle=True)
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return epochs * len(ds) / (time.perf_counter() - t0)


def ours(model, ds, batch, epochs):
    cfg = TrainConfig(epochs=epochs, batch_size=batch, lr=0.01, device="cpu", progress=False)
    t0 = time.perf_counter()
    fit(model, ds, None, cfg)
    return epochs * len(ds) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small_vgg")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(a.n, 3, a.size, a.size, generator=g), torch.randint(0, 10, (a.n,), generator=g))
    results = {}
    for name, fn in (("bare", bare), ("fit", ours), ("bare (again)", bare), ("fit (again)", ours)):
        torch.manual_seed(0)
        results[name] = fn(models.build(a.model, 10), ds, a.batch, a.epochs)
        print(f"{name:13s} {results[name]:8.1f} img/s")
    ratio = (results["fit"] + results["fit (again)"]) / (results["bare"] + results["bare (again)"])
    print(f"ratio fit / bare = {ratio:.3f}  (target >= 0.9; {a.model}, {a.size}px, batch {a.batch}, CPU threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
