"""benchmarks/gpu.py --dry-run: every figure and projection of the GPU benchmark runs on the CPU at toy
sizes and prints one well-formed JSON line each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {"nad_search_over_train_step", "nad_jpeg_over_memory", "nad_batched_over_one_class",
           "dissect_unavoidable_over_end_to_end", "dissect_peak_memory_growth_4x"}


@pytest.mark.slow
def test_gpu_benchmark_dry_run():
    done = subprocess.run([sys.executable, "benchmarks/gpu.py", "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          check=False, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    figs = {line["figure"]: line for line in lines if "figure" in line}
    assert set(figs) == FIGURES and all(line["dry_run"] for line in lines)
    for name, fig in figs.items():
        assert fig["value"] > 0 or name == "dissect_peak_memory_growth_4x", fig
        assert fig["device"] == "cpu"
    hours = [line["hours_one_device"] for line in lines if "projection" in line]
    assert len(hours) == 2 and all(h > 0 for h in hours)


def test_gpu_benchmark_refuses_without_cuda_or_dry_run():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the full benchmark would run")
    done = subprocess.run([sys.executable, "benchmarks/gpu.py"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 2 and "--dry-run" in done.stderr
