"""Batched NAD path search versus upstream's one-class loop: speed-up and peak memory; and with
`--precision`, how many gates bf16 flips on the built-in model.

    .venv/bin/python benchmarks/nad_search.py [--classes 32] [--per-class 32] [--size 32] [--epochs 1]
    .venv/bin/python benchmarks/nad_search.py --precision [--set default]
    .venv/bin/python benchmarks/nad_search.py --limits [--classes 10] [--per-class 32] [--size 32]

`--limits` prints one JSON line per figure, for the built-in small_vgg and small_resnet: the batched
search's images/s divided by the same model's bare training step's images/s (forward, backward and
SGD update on in-memory tensors of the search's batch, classes x 16 images, and input size; target
0.75), and for small_vgg the search's images/s reading the images as JPEG files of an ImageFolder
divided by its images/s reading the same decoded pixels from memory (target 0.9). The search runs as
`method.search` does (fp32, per-class generators), with crops at scale (1, 1) and no flips so that no
batch is skipped (every image is still cropped and resized). `value` divides wall-clock rates (the
figure on an idle machine); `value_cpu_time` divides rates per CPU second of the process (the figure
to read on a shared CPU).

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
import copy
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from netanatomy import models, params
from netanatomy.nad import method, run
from netanatomy.nad.images import Images
from PIL import Image
from torchvision.datasets import ImageFolder


def _head(model):
    """The model's last linear layer (its classifier head)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]


def _setup(classes: int, per_class: int, size: int, seed: int = 0, name: str = "small_vgg", device: str = "cpu"):
    """Model `name` with `classes` outputs and random textures labelled by its own predictions, `per_class`
    per class: its head reads equal angular sectors of the whitened top-2 principal plane of its
    features, so the network's own predictions give balanced classes."""

    torch.manual_seed(seed)
    model = models.build(name, classes).eval().to(device)
    n = classes * per_class * 4
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = (x + 0.3 * torch.rand(n, 3, size, size, generator=g) - 0.65) / 0.3
    head, seen = _head(model), []
    hook = head.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().cpu()))
    with torch.no_grad():
        for i in range(0, n, 64):
            model(x[i:i + 64].to(device))
        hook.remove()
        feats = torch.cat(seen)
        mean = feats.mean(0)
        _, sv, v = torch.linalg.svd(feats - mean, full_matrices=False)
        u = v[:2] / (sv[:2, None] / (n - 1) ** 0.5)
        theta = torch.arange(classes) * 2 * torch.pi / classes
        w = torch.cos(theta)[:, None] * u[0] + torch.sin(theta)[:, None] * u[1]
        head.weight.copy_(w)
        head.bias.copy_(-(w @ mean))
        logits = torch.cat([model(x[i:i + 64].to(device)).cpu() for i in range(0, n, 64)])
    y = logits.argmax(1)
    keep = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(classes)])
    return model, x[keep].contiguous(), y[keep].contiguous()


def search_rate(model, images, name: str, classes: int, size: int, epochs: int, device: str) -> dict:
    """Images/s of the batched search (`method.search`, fp32) reading `images`: every class's images
    `epochs` times, batch 16 per class, upstream's augmentation at scale (1, 1) without flips (every
    image is still cropped and resized; no flip changes a prediction, so no batch is skipped)."""

    cfg = method.SearchConfig(beta=4.5, lr=0.1, epochs=epochs, path_epoch=None, batch_size=16, device=device,
                              crop_scale=(1.0, 1.0), flip=False, progress=False)
    method.search(model, images, models.layers(name, "nad"), cfg.replace(epochs=1, path_epoch=1), size)  # warm
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    res = method.search(model, images, models.layers(name, "nad"), cfg, size)
    _sync(device)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    steps = int(res.history["steps"].sum())
    return {"images_per_s": len(images) * epochs / seconds, "images_per_cpu_s": len(images) * epochs / cpu,
            "seconds": seconds,
            "skipped": int(res.history["skipped"].sum()), "class_steps": steps,
            "batch": classes * 16, "device": str(torch.device(device))}


def train_step_rate(model, batch: int, size: int, device: str, steps: int = 5) -> tuple[float, float]:
    """Images per second and per CPU second of the model's bare training step (forward, backward, SGD update) on in-memory tensors of
    `batch` images at `size` px, fp32 (a copy of the model: the original is left as it was)."""

    net = copy.deepcopy(model).train().to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, _head(net).out_features, (batch,), device=device)
    for i in range(steps + 1):
        if i == 1:  # the first step warms up
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    _sync(device)
    return batch * steps / (time.perf_counter() - t0), batch * steps / (time.process_time() - c0)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def write_jpegs(root, x, y, mean: float = 0.65, std: float = 0.3):
    """The textures `x` (normalised as `_setup` makes them) as JPEG files of an ImageFolder under `root`
    (quality 95), and the same uint8 pixels as decoded from the files, in memory (N, 3, H, W)."""

    pixels = (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    decoded = []
    for i, (img, c) in enumerate(zip(pixels, y.tolist())):
        folder = Path(root) / f"c{c:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:06d}.jpg", quality=95)
    ds = ImageFolder(str(root))
    for path, _ in ds.samples:
        decoded.append(torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1).copy()))
    return ds, torch.stack(decoded), torch.tensor(ds.targets)


def limit_figures(name: str, classes: int, per_class: int, size: int, epochs: int, device: str,
                  jpeg_root=None) -> list[dict]:
    """The search against the model's limit: search images/s over bare training-step images/s (same batch
    and input size); and, with `jpeg_root`, search images/s reading JPEG files (an ImageFolder, decoded
    in the search's own process) over images/s from the same decoded pixels in memory."""

    model, x, y = _setup(classes, per_class, size, name=name, device=device)
    mem = Images.of_tensors(x, y)
    search = search_rate(model, mem, name, classes, size, epochs, device)
    train, train_cpu = train_step_rate(model, search["batch"], size, device)
    out = [{"figure": "nad_search_over_train_step", "model": name, "size": size, "classes": classes,
            "value": search["images_per_s"] / train, "target": 0.75,
            "met": search["images_per_s"] / train >= 0.75,
            "value_cpu_time": search["images_per_cpu_s"] / train_cpu, "search_images_per_s": search["images_per_s"],
            "train_step_images_per_s": train, "batch": search["batch"], "skipped": search["skipped"],
            "device": search["device"]}]
    if jpeg_root is not None:
        ds, pixels, targets = write_jpegs(jpeg_root, x, y)
        mean_std = ((0.65,) * 3, (0.3,) * 3)
        files = Images.of_dataset(ds, mean_std)
        memory = Images(np.asarray(targets, dtype=np.int64), lambda i: pixels[i], torch.tensor(mean_std[0]),
                        torch.tensor(mean_std[1]))
        jpeg = search_rate(model, files, name, classes, size, epochs, device)
        tensors = search_rate(model, memory, name, classes, size, epochs, device)
        out.append({"figure": "nad_jpeg_over_memory", "model": name, "size": size, "classes": classes,
                    "value": jpeg["images_per_s"] / tensors["images_per_s"], "target": 0.9,
                    "met": jpeg["images_per_s"] / tensors["images_per_s"] >= 0.9,
                    "value_cpu_time": jpeg["images_per_cpu_s"] / tensors["images_per_cpu_s"],
                    "jpeg_images_per_s": jpeg["images_per_s"], "memory_images_per_s": tensors["images_per_s"],
                    "device": jpeg["device"]})
    return out


def _run(mode: str, args: dict, queue) -> None:

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


def compare(classes: int, per_class: int, size: int, epochs: int, device: str, verbose: bool = True) -> dict:
    """The batched search against upstream's one-class loop (same search), each in a fresh process:
    the figure as one JSON-able dict (speed-up of batching classes, memory ratio)."""
    a = {"classes": classes, "per_class": per_class, "size": size, "epochs": epochs, "device": device}
    ctx = mp.get_context("spawn")
    out = {}
    for mode in ("sequential", "batched"):
        q = ctx.Queue()
        proc = ctx.Process(target=_run, args=(mode, a, q))
        proc.start()
        out[mode] = q.get()
        proc.join()
    diff = max(float(np.abs(np.array(out["batched"]["logits"][k]) - np.array(out["sequential"]["logits"][k])).max())
               for k in out["batched"]["logits"])
    s, b = out["sequential"], out["batched"]
    if verbose:
        unit = "MiB (CUDA max allocated)" if b["device"].startswith("cuda") else "MiB (process peak RSS)"
        print(f"NAD search, small_vgg, {classes} classes x {per_class} images at {size} px, "
              f"{epochs} epoch(s), batch 16 per class, device {b['device']}")
        print(f"  one-class loop : {s['seconds']:8.2f} s ({s['cpu']:.1f} CPU s)   peak {s['peak_mib']:8.1f} {unit}")
        print(f"  batched        : {b['seconds']:8.2f} s ({b['cpu']:.1f} CPU s)   peak {b['peak_mib']:8.1f} {unit}")
        print(f"  speed-up (one-class loop / batched): {s['seconds'] / b['seconds']:.2f}x wall clock, "
              f"{s['cpu'] / b['cpu']:.2f}x CPU time")
        print(f"  memory ratio (batched / one-class loop): {b['peak_mib'] / s['peak_mib']:.2f}x")
        print(f"  max |logit difference| between the modes: {diff:.2e}; skipped batches: "
              f"{s['skipped']} / {b['skipped']}; fewest images in a class: {b['min_class_images']}")
    return {"figure": "nad_batched_over_one_class", "model": "small_vgg", "size": size, "classes": classes,
            "value": s["seconds"] / b["seconds"], "memory_ratio": b["peak_mib"] / s["peak_mib"],
            "sequential_s": s["seconds"], "batched_s": b["seconds"], "max_logit_difference": diff,
            "device": b["device"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", action="store_true", help="measure the gates bf16 flips on the built-in model")
    p.add_argument("--limits", action="store_true",
                   help="search / bare training step and JPEG / in-memory input, built-in models (JSON lines)")
    p.add_argument("--set", default="default", choices=["default", "smoke"], help="parameter set of --precision")
    p.add_argument("--classes", type=int, default=32)
    p.add_argument("--per-class", type=int, default=32, help="training images per class (2 batches of 16)")
    p.add_argument("--size", type=int, default=32, help="image size in pixels")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--device", default="auto")
    a = vars(p.parse_args(argv))
    if a["precision"]:
        return precision(a["set"])
    if a["limits"]:
        device = "cuda" if a["device"] == "auto" and torch.cuda.is_available() else \
            ("cpu" if a["device"] == "auto" else a["device"])
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("small_vgg", "small_resnet"):
                jpeg = Path(tmp) / name if name == "small_vgg" else None
                for fig in limit_figures(name, a["classes"], a["per_class"], a["size"], a["epochs"], device, jpeg):
                    print(json.dumps(fig))
        return None
    print(json.dumps(compare(a["classes"], a["per_class"], a["size"], a["epochs"], a["device"])))
    return None


if __name__ == "__main__":
    sys.exit(main())
