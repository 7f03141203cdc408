"""What a notebook run writes: tables (CSV + JSON with provenance), figures, HTML pages, findings."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from .runtime import atomic_write_csv, atomic_write_json, atomic_write_text, provenance, repo_root


def reports_root() -> Path:
    """Root of generated reports (env NETANATOMY_REPORTS, default <repo>/reports)."""
    return Path(os.environ.get("NETANATOMY_REPORTS") or repo_root() / "reports")


class Reporter:
    """Writes one notebook's results under reports/<notebook>/, each with the provenance of the run."""

    def __init__(self, notebook: str, params: dict | None = None, device: Any = None):
        self.notebook = notebook
        self.dir = reports_root() / notebook
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta = provenance(params, device)
        self.findings: list[str] = []
        atomic_write_json(self.dir / "provenance.json", self.meta)

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
        try:
            from IPython.display import Markdown, display
            display(Markdown(text))
        except ImportError:
            print(text)


def html_table(df: pd.DataFrame) -> str:
    """A DataFrame as a small styled HTML table."""
    return df.to_html(classes="tbl", border=0, escape=True)


PAGE_STYLE = """<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}
table.tbl{border-collapse:collapse}table.tbl td,table.tbl th{border-bottom:1px solid #ddd;padding:3px 8px;
text-align:left}.ok{color:#070}.fail{color:#b00}code{background:#f4f4f4;padding:1px 3px}</style>"""


def html_page(title: str, body: str) -> str:
    """A complete HTML page with the project's style."""
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"{PAGE_STYLE}</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
