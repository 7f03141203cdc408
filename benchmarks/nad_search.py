"""Batched NAD path search versus upstream's one-class loop: speed-up and peak memory; and with
`--precision`, how many gates bf16 flips on the built-in model.

    .venv/bin/python benchmarks/nad_search.py [--classes 32] [--per-class 32] [--size 32] [--epochs 1]
    .venv/bin/python benchmarks/nad_search.py --precision [--set default]

`--precision` runs the default nad_findpath search (`params/nad_findpath.yaml`, or `.smoke.yaml` with
`--set smoke`) on its zoo model three times on the CPU: fp32 with seed s, bf16 (`amp=True`:
torch.autocast('cpu', dtype=torch.bfloat16) around the search's forward passes) with seed s, and fp32
with seed s + 1. A path is the sign of a logit, so it prints the share of gates on which bf16 and fp32
disagree, beside the share on which two fp32 seeds disagree (the search's own spread). The searches
go through the cache (`NETANATOMY_CACHE`), so the fp32 seed-s search is the notebook's.

Both modes run the same search (same model, classes, images, crops and flips;
`netanatomy.nad.method.search` with batched=True / batched=False) on a small_vgg with `--classes`
outputs. The images are random textures whose labels are the network's own predictions (its head
set to read equal angular sectors of the features' whitened top principal plane, so every class
gets `--per-class` images). Random crops and flips can still change a prediction, so some batches
are skipped, identically in both modes (the count is printed). Each mode runs in a fresh process to
read its peak memory (CUDA: max allocated; CPU: peak resident set size of the process).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time


def _setup(classes: int, per_class: int, size: int, seed: int = 0):
    import torch
    from netanatomy import models

    torch.manual_seed(seed)
    model = models.build("small_vgg", classes).eval()
    n = classes * per_class * 4
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = (x + 0.3 * torch.rand(n, 3, size, size, generator=g) - 0.65) / 0.3
    with torch.no_grad():
        feats = torch.cat([models.pooled_features(model, x[i:i + 256])[0] for i in range(0, n, 256)])
        # the head reads the angle of each image in the whitened top-2 principal plane of its features:
        # K equal sectors, so the network's own predictions give balanced classes
        mean = feats.mean(0)
        _, sv, v = torch.linalg.svd(feats - mean, full_matrices=False)
        u = v[:2] / (sv[:2, None] / (n - 1) ** 0.5)
        theta = torch.arange(classes) * 2 * torch.pi / classes
        w = torch.cos(theta)[:, None] * u[0] + torch.sin(theta)[:, None] * u[1]
        model.fc.weight.copy_(w)
        model.fc.bias.copy_(-(w @ mean))
        logits = torch.cat([model(x[i:i + 256]) for i in range(0, n, 256)])
    y = logits.argmax(1)
    keep = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(classes)])
    return model, x[keep].contiguous(), y[keep].contiguous()


def _run(mode: str, args: dict, queue) -> None:
    import torch
    from netanatomy import models
    from netanatomy.nad import method, run

    model, x, y = _setup(args["classes"], args["per_class"], args["size"])
    counts = torch.bincount(y, minlength=args["classes"])
    cfg = method.SearchConfig(beta=4.5, lr=0.1, epochs=args["epochs"], path_epoch=None, batch_size=16,
                              device=args["device"], progress=False)
    dev = torch.device("cuda" if args["device"] != "cpu" and torch.cuda.is_available() else "cpu")
    layers = models.layers("small_vgg", "nad")
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        model.to(dev)
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    res = method.search(model, run.Images.of_tensors(x, y), layers, cfg, args["size"], batched=(mode == "batched"))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    queue.put({"mode": mode, "seconds": seconds, "cpu": cpu, "peak_mib": peak, "base_rss_mib": base_rss / 1024,
               "skipped": int(res.history["skipped"].sum()), "min_class_images": int(counts.min()),
               "logits": {k: v.tolist() for k, v in res.logits.items()}, "device": str(dev)})


def precision(set_name: str) -> None:
    """Share of gates bf16 flips against fp32, and two fp32 seeds' disagreement, on the built-in model."""
    from pathlib import Path

    import yaml
    from netanatomy import params
    from netanatomy.nad import run

    here = Path(__file__).resolve().parents[1] / "params"
    given = yaml.safe_load((here / ("nad_findpath.yaml" if set_name == "default" else "nad_findpath.smoke.yaml"))
                           .read_text())
    cfg = run.FindPathConfig.from_params(params.with_defaults("nad_findpath", given), device="cpu", progress=False)
    subject = run.subject_for(cfg, cfg.model)
    fp32 = run.find_paths(subject, cfg)
    bf16 = run.find_paths(subject, cfg.replace(amp=True))
    other = run.find_paths(subject, cfg.replace(seed=cfg.seed + 1))

    def flipped(a, b) -> tuple[int, int]:
        ha, hb = a.hard(), b.hard()
        return sum(int((ha[n] != hb[n]).sum()) for n in a.layers), sum(ha[n].numel() for n in a.layers)

    (nb, total), (ns, _) = flipped(fp32, bf16), flipped(fp32, other)
    print(f"NAD search, {subject.name} on the built-in world ({set_name} set), {len(fp32.classes)} classes x "
          f"{total // len(fp32.classes)} gates = {total} gates, CPU")
    print(f"  bf16 vs fp32, same seed        : {nb} gates differ ({nb / total:.2%})")
    print(f"  fp32 seed {cfg.seed} vs seed {cfg.seed + 1}        : {ns} gates differ ({ns / total:.2%})")
    for name in fp32.layers:
        a, b = fp32.hard()[name], bf16.hard()[name]
        print(f"    {name:<18} bf16 flips {int((a != b).sum()):5d} of {a.numel():5d} ({float((a != b).float().mean()):.2%})")
    print(json.dumps({"bf16_flip_share": nb / total, "seed_flip_share": ns / total, "gates": total}))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", action="store_true", help="measure the gates bf16 flips on the built-in model")
    p.add_argument("--set", default="default", choices=["default", "smoke"], help="parameter set of --precision")
    p.add_argument("--classes", type=int, default=32)
    p.add_argument("--per-class", type=int, default=32, help="training images per class (2 batches of 16)")
    p.add_argument("--size", type=int, default=32, help="image size in pixels")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--device", default="auto")
    a = vars(p.parse_args(argv))
    if a["precision"]:
        return precision(a["set"])
    ctx = mp.get_context("spawn")
    out = {}
    for mode in ("sequential", "batched"):
        q = ctx.Queue()
        proc = ctx.Process(target=_run, args=(mode, a, q))
        proc.start()
        out[mode] = q.get()
        proc.join()
    import numpy as np
    diff = max(float(np.abs(np.array(out["batched"]["logits"][k]) - np.array(out["sequential"]["logits"][k])).max())
               for k in out["batched"]["logits"])
    s, b = out["sequential"], out["batched"]
    unit = "MiB (CUDA max allocated)" if b["device"].startswith("cuda") else "MiB (process peak RSS)"
    print(f"NAD search, small_vgg, {a['classes']} classes x {a['per_class']} images at {a['size']} px, "
          f"{a['epochs']} epoch(s), batch 16 per class, device {b['device']}")
    print(f"  one-class loop : {s['seconds']:8.2f} s ({s['cpu']:.1f} CPU s)   peak {s['peak_mib']:8.1f} {unit}")
    print(f"  batched        : {b['seconds']:8.2f} s ({b['cpu']:.1f} CPU s)   peak {b['peak_mib']:8.1f} {unit}")
    print(f"  speed-up (one-class loop / batched): {s['seconds'] / b['seconds']:.2f}x wall clock, "
          f"{s['cpu'] / b['cpu']:.2f}x CPU time")
    print(f"  memory ratio (batched / one-class loop): {b['peak_mib'] / s['peak_mib']:.2f}x")
    print(f"  max |logit difference| between the modes: {diff:.2e}; skipped batches: "
          f"{s['skipped']} / {b['skipped']}; fewest images in a class: {b['min_class_images']}")
    print(json.dumps({"speedup": s["seconds"] / b["seconds"], "memory_ratio": b["peak_mib"] / s["peak_mib"],
                      "sequential_s": s["seconds"], "batched_s": b["seconds"]}))


if __name__ == "__main__":
    sys.exit(main())
