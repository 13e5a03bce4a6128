"""The study report: a study directory's stored results -> summary.json, results.csv and report.html.

    from clearsight.report import render
    render("runs/quick")        # writes runs/quick/{results.csv, summary.json, report.html}; returns the page

Reads files only (study.yaml and the complete cells' results, logs and examples); it never trains, attacks or
attributes, so `clearsight report DIR` re-renders a study from what is stored, also while shards still run.
"""

from __future__ import annotations

from clearsight.report.collect import collect, gather, read_study, summarize
from clearsight.report.page import render
from clearsight.report.terminal import summary_text

__all__ = ["collect", "gather", "read_study", "render", "summarize", "summary_text"]
