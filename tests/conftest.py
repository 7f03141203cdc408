"""Test session settings: a persistent test cache, reports in a temp folder, headless plotting."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("NETANATOMY_CACHE", str(ROOT / ".cache" / "tests"))
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_configure(config):
    reports = Path(config._tmp_path_factory.mktemp("reports")) if hasattr(config, "_tmp_path_factory") else None
    os.environ.setdefault("NETANATOMY_REPORTS", str(reports or ROOT / ".cache" / "test-reports"))
