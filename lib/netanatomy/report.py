"""What a notebook run writes: tables (CSV + JSON with provenance), figures, HTML pages, findings."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from PIL import Image

from .runtime import atomic_write_csv, atomic_write_json, atomic_write_text, provenance, repo_root, start_profile


def reports_root() -> Path:
    """Root of generated reports (env NETANATOMY_REPORTS, default <repo>/reports)."""
    return Path(os.environ.get("NETANATOMY_REPORTS") or repo_root() / "reports")


def clear(folder: Path) -> None:
    """Remove an earlier run's report folder (renamed aside first, so it disappears at once)."""
    if folder.exists():
        aside = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)


class Reporter:
    """Writes one run's results under reports/<run>/ (the notebook's name unless the runner names the run),
    each with the provenance of the run; an earlier run's folder is cleared first."""

    def __init__(self, notebook: str, params: dict | None = None, device: Any = None):
        self.notebook = notebook
        # the runner names the run (e.g. nad_hitrate.cifar10); a notebook run by hand writes under its own name
        self.dir = reports_root() / (os.environ.get("NETANATOMY_RUN") or notebook)
        clear(self.dir)  # a run's folder never mixes its results with an earlier run's
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta = provenance(params, device)
        self.findings: list[str] = []
        atomic_write_json(self.dir / "provenance.json", self.meta)
        start_profile(self.dir / "profile.json")

    def table(self, df: pd.DataFrame, name: str) -> pd.DataFrame:
        """Save a table as <name>.csv and <name>.json (records plus provenance); return it for display."""
        atomic_write_csv(df, self.dir / f"{name}.csv", index=not isinstance(df.index, pd.RangeIndex))
        records = json.loads(df.reset_index().to_json(orient="records")) if not isinstance(
            df.index, pd.RangeIndex) else json.loads(df.to_json(orient="records"))
        atomic_write_json(self.dir / f"{name}.json", {"table": records, "provenance": self.meta})
        return df

    def json(self, obj: Any, name: str) -> Path:
        """Save any JSON-able result with provenance as <name>.json."""
        return atomic_write_json(self.dir / f"{name}.json", {"result": obj, "provenance": self.meta})

    def figure(self, fig, name: str):
        """Save a matplotlib figure as <name>.png; return it so the notebook shows it."""
        path = self.dir / f"{name}.png"
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
        return fig

    def page(self, text: str, name: str) -> Path:
        """Save an HTML page as <name>.html (for reports such as dissection galleries)."""
        return atomic_write_text(self.dir / f"{name}.html", text)

    def say(self, text: str) -> None:
        """State a finding: shown in the notebook as Markdown and listed in reports/index.html."""
        self.findings.append(text)
        atomic_write_json(self.dir / "findings.json", {"findings": self.findings, "provenance": self.meta})
        display(Markdown(text))


PAGE_STYLE = """<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}
table.tbl{border-collapse:collapse}table.tbl td,table.tbl th{border-bottom:1px solid #ddd;padding:3px 8px;
text-align:left}.ok{color:#070}.fail{color:#b00}.low{color:#aaa}code{background:#f4f4f4;padding:1px 3px}</style>"""


def html_page(title: str, body: str, css: str = "") -> str:
    """A complete HTML page with the project's style (plus page-specific `css` rules)."""
    extra = f"<style>{css}</style>" if css else ""
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"{PAGE_STYLE}{extra}</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"


def png_data_uri(image) -> str:
    """A matplotlib figure or a uint8 (H, W, 3) array as a ``data:image/png;base64,...`` URI for HTML."""
    buf = io.BytesIO()
    if isinstance(image, np.ndarray):
        Image.fromarray(image).save(buf, format="PNG")
    else:
        image.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
