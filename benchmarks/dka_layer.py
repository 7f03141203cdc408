"""Dynamic-K head: chunked TopKRouteLinear versus the upstream formula with plain autograd.

    .venv/bin/python benchmarks/dka_layer.py [--batch 256 --classes 365 --features 512 --k 5]

Shapes default to upstream's ResNet-18 on Places365. Upstream (`RouteFcMaxAct`) builds the whole
B x C x D vote tensor and lets autograd keep it (and a dense B x C x D gradient) for backward;
`TopKRouteLinear` builds votes for a chunk of classes at a time and backpropagates through the
B x C x K selected votes only. Prints time per forward+backward and peak resident memory added by
the step (Linux VmHWM, reset through /proc/self/clear_refs), and their ratios. Not asserted.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test oracle: upstream's formula
from helpers.dka import reference_topk_linear
from netanatomy.dka.method import TopKRouteLinear


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(fn, x, layer, repeats: int) -> tuple[float, float]:
    """(seconds per forward+backward, peak MiB above the resident size before the step)."""
    fn(x, layer).sum().backward()          # warm-up
    times, peaks = [], []
    for _ in range(repeats):
        x.grad = None
        layer.zero_grad(set_to_none=True)
        gc.collect()
        ok = _reset_peak()
        base = _rss_kb("VmRSS")
        t0 = time.perf_counter()
        fn(x, layer).sum().backward()
        times.append(time.perf_counter() - t0)
        peaks.append((_rss_kb("VmHWM") - base) / 1024 if ok else float("nan"))
    return min(times), max(peaks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--classes", type=int, default=365)
    ap.add_argument("--features", type=int, default=512)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--max-votes", type=int, default=1 << 22, help="vote elements per chunk (the layer's default)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.rand(args.batch, args.features, requires_grad=True)
    layer = TopKRouteLinear(args.features, args.classes, args.k, max_votes=args.max_votes)
    variants = {
        "upstream (full votes, autograd)": lambda a, l: reference_topk_linear(a, l.weight, l.bias, l.k),
        f"TopKRouteLinear (chunk {layer.chunk(args.batch)} classes)": lambda a, l: l(a),
    }
    votes_mib = args.batch * args.classes * args.features * 4 / 2**20
    print(f"B={args.batch} C={args.classes} D={args.features} K={args.k}; one full vote tensor = {votes_mib:.0f} MiB "
          f"(float32); threads={torch.get_num_threads()}")
    results = {}
    for name, fn in variants.items():
        results[name] = measure(fn, x, layer, args.repeats)
        print(f"  {name:45s} {results[name][0] * 1e3:8.1f} ms   peak +{results[name][1]:7.1f} MiB")
    (t_ref, m_ref), (t_new, m_new) = results.values()
    print(f"speed-up {t_ref / t_new:.2f}x; peak memory ratio upstream/ours {m_ref / max(m_new, 1e-3):.1f}x")


if __name__ == "__main__":
    main()
