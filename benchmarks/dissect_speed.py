"""Speed and memory of the dissection tally: vectorised (batched matrix products) vs a per-unit loop.

A synthetic Broden set (default 2,000 images of 56 px with 28 px segmentations, an object map of
20 labels, a part map of 10 and a whole-image scene label) is written once; a random conv layer
gives 128 units at 7x7. Both tallies get the same activations, thresholds and segmentations
(loaded beforehand), so only the tally is timed:

* vectorised: `netanatomy.dissect.method.tally_batch` over batches of 64 images;
* loop: NetDissect-Lite's way, per image and per unit: upsample the map, threshold, bincount the
  labels under the mask, add the whole-image labels and the category activation.

Each runs in its own process so its peak memory (max RSS above the process's baseline after the
data are loaded) is its own. The two results are checked to agree, and the end-to-end
`netanatomy.dissect.run.dissect` throughput (both passes, PNG decoding and forward passes included)
is printed too, with NetDissect-Lite's bilinear and the original NetDissect's receptive-field-centred
upsampling.

    .venv/bin/python benchmarks/dissect_speed.py [--images 2000] [--units 128] [--threads 1]
    .venv/bin/python benchmarks/dissect_speed.py --limits [--images 400] [--threads 1]

`--limits` prints one JSON line per figure: the work dissection cannot avoid (decoding every image and
segmentation once, plus one bare forward pass to the dissected layer) over `dissect()` end to end
(both passes, decoding included, no cache; target 0.6), and the growth of the process's peak memory
(max RSS, a fresh process each) when the data set has 4x the images (target below 10 %).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from netanatomy import broden, models
from netanatomy.dissect import method, run
from netanatomy.hooks import run as run_model
from netanatomy.hooks import trace


def write_data(root: Path, n: int, size: int = 56, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    obj = np.zeros((n, size, size), np.int64)
    part = np.zeros((n, size, size), np.int64)
    for i in range(n):
        for _ in range(3):
            y, x = rng.integers(0, size - 16, 2)
            lab = int(rng.integers(1, 21))
            obj[i, y:y + 16, x:x + 16] = lab
            if rng.random() < 0.5:
                part[i, y:y + 8, x:x + 8] = 300 + int(rng.integers(1, 11))  # ids above 255
    scene = rng.integers(401, 406, n)
    labels = {"object": [(k, f"obj{k}") for k in range(1, 21)],
              "part": [(300 + k, f"part{k}") for k in range(1, 11)],
              "scene": [(400 + k, f"scene{k}-s") for k in range(1, 6)]}
    return broden.write_broden(root, images, labels, {"object": obj, "part": part}, {"scene": scene},
                               progress=False)


def make_model(units: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, units, 9, stride=8, padding=4), torch.nn.ReLU())


def load_all(root: Path, units: int, n: int | None = None):
    ds = broden.BrodenDataset(root)
    n = len(ds) if n is None else min(n, len(ds))
    items = [ds[i] for i in range(n)]
    images, seg, scal, _ = broden.collate(items)
    x = images.permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        acts = make_model(units)(x)
    flat = acts.transpose(0, 1).reshape(units, -1)
    thr = torch.quantile(flat, 0.995, dim=1)
    return ds, acts, thr, seg, scal


def build_model(spec: str) -> tuple[torch.nn.Module, list[str]]:
    """'conv<units>' (`make_model`, layer '1') or a `netanatomy.models` name (randomly initialised, its
    last dissected layer) with the layers to dissect."""
    if spec.startswith("conv"):
        return make_model(int(spec[4:])), ["1"]
    torch.manual_seed(0)
    return models.build(spec, 10).eval(), models.layers(spec, "dissect")[-1:]


def unavoidable_seconds(root: Path, spec: str, size: int, device: str, batch: int = 64) -> tuple[float, float]:
    """Wall-clock and CPU seconds to decode every image and segmentation of the set once and run one bare forward pass (fp32,
    to the dissected layer, batches of `batch`) on the decoded images: the floor of `dissect()`."""
    ds = broden.BrodenDataset(root)
    model, layers = build_model(spec)
    model.eval().to(device)
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(0, len(ds), batch):
        images = [ds.load_image(i) for i in range(s, min(len(ds), s + batch))]
        for i in range(s, min(len(ds), s + batch)):
            ds.load_segmentation(i)
        x = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float().div_(255)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad(), trace(model, layers, stop=True, detach=True):
            run_model(model, x)
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def end_to_end_seconds(root: Path, spec: str, size: int, device: str, batch: int = 64,
                       workers: int = 0) -> tuple[float, float]:
    """Wall-clock and CPU seconds (of this process; workers not counted) of `dissect()` (both passes, decoding included, no cache) of the model's dissected layer."""
    model, layers = build_model(spec)
    cfg = run.DissectConfig(normalize="none", progress=False, cache=False, device=device, batch_size=batch,
                            num_workers=workers)
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    run.dissect(model, layers, root, cfg, input_size=size)
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _peak_worker(root, spec, size, device, queue) -> None:
    torch.set_num_threads(1)
    end_to_end_seconds(Path(root), spec, size, device)
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def peak_mib(root: Path, spec: str, size: int, device: str) -> float:
    """Peak resident memory (MiB) of a fresh process running `dissect()` end to end on `root`."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_worker, args=(str(root), spec, size, device, q))
    p.start()
    out = q.get()
    p.join()
    return out


def limit_figures(folder: Path, n: int, spec: str, size: int, device: str, workers: int = 0) -> list[dict]:
    """The two dissection figures on synthetic Broden sets of `n` and 4 `n` images of `size` px written
    under `folder`: unavoidable work / end to end (target 0.6) and peak memory growth at 4x (< 10 %)."""
    roots = {}
    for count in (n, 4 * n):
        roots[count] = folder / f"broden_synth_{count}_{size}px"
        if not (roots[count] / "index.csv").exists():
            write_data(roots[count], count, size)
    floor, floor_cpu = unavoidable_seconds(roots[n], spec, size, device)
    full, full_cpu = end_to_end_seconds(roots[n], spec, size, device, workers=workers)
    small, large = peak_mib(roots[n], spec, size, device), peak_mib(roots[4 * n], spec, size, device)
    common = {"model": spec, "size": size, "images": n, "device": str(torch.device(device))}
    return [{"figure": "dissect_unavoidable_over_end_to_end", **common, "value": floor / full, "target": 0.6,
             "met": floor / full >= 0.6, "value_cpu_time": floor_cpu / full_cpu if not workers else None,
             "unavoidable_s": floor, "end_to_end_s": full,
             "end_to_end_images_per_s": n / full, "workers": workers},
            {"figure": "dissect_peak_memory_growth_4x", **common, "value": large / small - 1, "target": 0.1,
             "met": large / small - 1 < 0.1, "peak_mib": small, "peak_mib_4x": large}]


def vectorised(acts, thr, seg, scal, labelcat, batch=64):
    out = None
    for s in range(0, len(acts), batch):
        r = method.tally_batch(acts[s:s + batch], thr, seg[s:s + batch], scal[s:s + batch], labelcat)
        out = r[:3] if out is None else tuple(a + b for a, b in zip(out, r[:3]))
    return [t.numpy() for t in out]


def loop(acts, thr, seg, scal, labelcat):
    """Per image, per unit, as NetDissect-Lite's tally_job does."""
    n, units = acts.shape[:2]
    c = labelcat.shape[0] - 1
    cats = labelcat.numpy()
    inter = np.zeros((units, c + 1))
    act_cat = np.zeros((units, cats.shape[1]))
    truth = np.zeros(c + 1)
    sh, sw = seg.shape[-2:]
    segs, scals, a_np, t_np = seg.numpy(), scal.numpy(), acts.numpy(), thr.numpy()
    for i in range(n):
        pixels = segs[i]
        scalars = [s for s in scals[i] if s > 0]
        counts = np.bincount(pixels.ravel(), minlength=c + 1)
        counts[0] = 0
        truth += counts
        for s in scalars:
            truth[s] += sh * sw
        held = (cats[np.flatnonzero(counts)].sum(0) + sum((cats[s] for s in scalars), 0)) > 0
        for u in range(units):
            fmap = a_np[i, u]
            if fmap.max() <= t_np[u]:
                continue
            up = F.interpolate(torch.from_numpy(fmap)[None, None], size=(sh, sw), mode="bilinear",
                               align_corners=False)[0, 0].numpy()
            idx = np.argwhere(up > t_np[u])
            under = np.bincount(pixels[:, idx[:, 0], idx[:, 1]].ravel(), minlength=c + 1)
            under[0] = 0
            inter[u] += under
            for s in scalars:
                inter[u, s] += len(idx)
            act_cat[u] += len(idx) * held
    return [inter[:, 1:], act_cat, truth[1:]]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _worker(kind, root, units, n, threads, queue):
    torch.set_num_threads(threads)
    ds, acts, thr, seg, scal = load_all(Path(root), units, n)
    labelcat = torch.from_numpy(ds.labelcat)
    try:  # reset the peak-RSS mark (Linux) so that the peak is the tally's own
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    base = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    out = (vectorised if kind == "vectorised" else loop)(acts, thr, seg, scal, labelcat)
    dt = time.perf_counter() - t0
    peak = max(0, _rss_kib("VmHWM") - base)
    queue.put((kind, len(acts), dt, peak / 1024, [np.asarray(o) for o in out]))


def measure(kind, root, units, n, threads):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_worker, args=(kind, str(root), units, n, threads, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--units", type=int, default=128)
    ap.add_argument("--loop-images", type=int, default=None, help="images for the loop (default: all)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both tallies (default 1: the reference loop is single-threaded)")
    ap.add_argument("--root", default=None, help="where to write the synthetic Broden set (default: a temp dir)")
    ap.add_argument("--limits", action="store_true", help="unavoidable work / end to end and memory at 4x (JSON)")
    ap.add_argument("--size", type=int, default=56, help="--limits: image size in pixels")
    args = ap.parse_args(argv)
    if args.limits:
        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as tmp:
            for fig in limit_figures(Path(args.root or tmp), args.images, f"conv{args.units}", args.size, "cpu"):
                print(json.dumps(fig))
        return 0
    tmp = tempfile.TemporaryDirectory() if args.root is None else None
    root = Path(args.root or tmp.name) / f"broden_synth_{args.images}"
    if not (root / "index.csv").exists():
        t0 = time.perf_counter()
        write_data(root, args.images)
        print(f"wrote a synthetic Broden set of {args.images} images in {time.perf_counter() - t0:.1f} s: {root}")
    kind, n_v, dt_v, mem_v, out_v = measure("vectorised", root, args.units, None, args.threads)
    kind, n_l, dt_l, mem_l, out_l = measure("loop", root, args.units, args.loop_images, args.threads)
    if n_l == n_v:
        for a, b, name in zip(out_v, out_l, ("intersection", "activation", "truth")):
            assert np.array_equal(a, b), f"{name} differs between the vectorised tally and the loop"
        agree = "identical counts"
    else:
        agree = f"loop on the first {n_l} images only"
    ips_v, ips_l = n_v / dt_v, n_l / dt_l
    print(f"tally, {args.units} units at 7x7 -> 28x28 masks, {len(out_v[2])} labels, {args.threads} "
          f"thread(s) ({agree}):")
    print(f"  vectorised (batched matmul): {ips_v:9.1f} images/s   peak extra memory {mem_v:7.1f} MiB")
    print(f"  per-unit Python loop:        {ips_l:9.1f} images/s   peak extra memory {mem_l:7.1f} MiB")
    print(f"  speed-up: {ips_v / ips_l:.1f}x")
    # end to end: both passes with PNG decoding and forward passes, no cache, with each upsampling
    torch.set_num_threads(args.threads)
    for upsample in ("bilinear", "receptive_field"):
        cfg = run.DissectConfig(normalize="none", progress=False, cache=False, upsample=upsample)
        t0 = time.perf_counter()
        run.dissect(make_model(args.units), ["1"], root, cfg)
        dt = time.perf_counter() - t0
        print(f"end to end dissect() (2 passes, PNG decoding, forward, {upsample} upsampling): "
              f"{args.images / dt:.1f} images/s ({dt:.1f} s for {args.images} images)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
