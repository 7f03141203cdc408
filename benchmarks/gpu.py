"""Every speed figure of the heavy steps on a CUDA device in one run (under 8 minutes on one GPU), one
JSON line per figure, then the projections of the paper-scale runs from the measured throughput.

    .venv/bin/python benchmarks/gpu.py              # on a machine with a GPU
    .venv/bin/python benchmarks/gpu.py --dry-run    # anywhere: the same code on the CPU at toy sizes

Figures (each with its target; `met` says whether it was reached):

- ``nad_search_over_train_step``: the NAD search's images/s over VGG16's bare training step's images/s
  (forward, backward, SGD update; same batch and 224 px input; `benchmarks/nad_search.py`); target 0.75.
- ``nad_jpeg_over_memory``: the search reading JPEG files over the search reading the same decoded pixels
  from memory; target 0.9.
- ``nad_batched_over_one_class``: the batched search's speed-up over upstream's one-class loop (small_vgg,
  32 classes at 32 px): the gain batching classes brings.
- ``dissect_unavoidable_over_end_to_end``: decoding every image and segmentation once plus one bare forward
  pass of ResNet-18 to layer4 (224 px), over `dissect()` end to end (`benchmarks/dissect_speed.py`);
  target 0.6.
- ``dissect_peak_memory_growth_4x``: peak host memory growth with 4x the images; target below 10 %.

Projections (``projection`` lines): NAD on VGG16 over all 1,000 ImageNet classes x 21 epochs (1,281,167
training images per epoch) and the dissection of ResNet-18 layer4 on 63,305 Broden images, in hours on
one device of the kind measured (the NAD classes and the dissection images share out over N devices with
`torchrun`, so N devices take about 1/N of it). `--dry-run` projects from the toy CPU figures: those
hours only show that the arithmetic runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts below
import dissect_speed
import nad_search

#: ImageNet's training images (one NAD epoch reads every class's own images once) and NAD's epochs.
IMAGENET_TRAIN, NAD_EPOCHS = 1_281_167, 21
#: Broden's images (NetDissect's broden1_224).
BRODEN_IMAGES = 63_305
#: (full run, --dry-run) sizes.
SIZES = {
    "nad": ({"name": "vgg16", "classes": 16, "per_class": 32, "size": 224, "epochs": 2},
            {"name": "small_vgg", "classes": 2, "per_class": 16, "size": 32, "epochs": 1}),
    "batched": ({"classes": 32, "per_class": 32, "size": 32, "epochs": 1},
                {"classes": 2, "per_class": 16, "size": 32, "epochs": 1}),
    "dissect": ({"spec": "resnet18", "n": 256, "size": 224, "workers": 4},
                {"spec": "conv16", "n": 16, "size": 32, "workers": 0}),
}


def figures(device: str, dry: bool, folder: Path) -> list[dict]:
    pick = 1 if dry else 0
    nad, batched, diss = (SIZES[k][pick] for k in ("nad", "batched", "dissect"))
    out = nad_search.limit_figures(nad["name"], nad["classes"], nad["per_class"], nad["size"], nad["epochs"], device,
                                   jpeg_root=folder / "jpeg")
    out.append(nad_search.compare(batched["classes"], batched["per_class"], batched["size"], batched["epochs"],
                                  device, verbose=False))
    out += dissect_speed.limit_figures(folder / "broden", diss["n"], diss["spec"], diss["size"], device,
                                       workers=diss["workers"])
    return out


def projections(figs: list[dict]) -> list[dict]:
    search = next(f for f in figs if f["figure"] == "nad_search_over_train_step")
    diss = next(f for f in figs if f["figure"] == "dissect_unavoidable_over_end_to_end")
    nad_images = IMAGENET_TRAIN * NAD_EPOCHS
    return [{"projection": f"NAD {search['model']} (measured at {search['size']} px), 1,000 ImageNet classes x "
                           f"{NAD_EPOCHS} epochs", "image_steps": nad_images,
             "hours_one_device": nad_images / search["search_images_per_s"] / 3600, "device": search["device"]},
            {"projection": f"dissection {diss['model']} (measured at {diss['size']} px), {BRODEN_IMAGES:,} Broden "
                           f"images", "images": BRODEN_IMAGES,
             "hours_one_device": BRODEN_IMAGES / diss["end_to_end_images_per_s"] / 3600, "device": diss["device"]}]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="run everything on the CPU at toy sizes")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here; use --dry-run to check that it runs", file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else "cuda"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        figs = figures(device, args.dry_run, Path(tmp))
    for line in figs + projections(figs):
        print(json.dumps({**line, "dry_run": args.dry_run}))
    print(json.dumps({"total_seconds": time.perf_counter() - t0, "dry_run": args.dry_run,
                      "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
