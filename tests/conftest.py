"""Test session settings: a persistent test cache, reports outside reports/, headless plotting."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("NETANATOMY_CACHE", str(ROOT / ".cache" / "tests"))
os.environ.setdefault("NETANATOMY_REPORTS", str(ROOT / ".cache" / "test-reports"))
os.environ.setdefault("MPLBACKEND", "Agg")
