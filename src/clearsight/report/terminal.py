"""The study's summary as plain text for the terminal: one line per method, the table's headline columns.

Headline columns: clean, robust and certified accuracy as the report's table has them, the first row of each
interpretability metric (suite order), and training cost. Means only, to fit a terminal; report.html has the
intervals, every row and the figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clearsight.report.collect import collect
from clearsight.report.plots import descriptor, with_data
from clearsight.report.table import relative_cost
from clearsight.report.text import fmt


def headline(summary: Mapping[str, Any]) -> list[str]:
    """The row keys shown: the table's non-interpretability columns, then each interpretability metric once."""
    keys, metrics = [], set()
    for key in summary["columns"]:
        d = descriptor(summary, key)
        if d["group"] != "interpretability":
            keys.append(key)
        elif d["metric"] not in metrics:
            metrics.add(d["metric"])
            keys.append(key)
    return keys


def summary_text(study_dir: str | Path) -> str:
    """The terminal summary of `study_dir` (reads the cells; writes nothing)."""
    summary = collect(study_dir, write=False)
    methods = with_data(summary)
    done, expected = len(summary["cells"]["complete"]), summary["cells"]["expected"]
    lines = [f"study {summary['study'].get('name')}: {done} of {expected} cells complete"]
    if not methods:
        return "\n".join(lines)
    keys = headline(summary)
    relative = relative_cost(summary)
    name_width = max(6, *(len(m["name"]) for m in methods))
    titles = [descriptor(summary, k)["title"] for k in keys] + ["train s/epoch"]
    details = [descriptor(summary, k)["detail"] for k in keys] + ["× standard" if relative else "seconds"]
    rows = []
    for m in methods:
        cost = m["train"]["relative"] if relative else m["train"]["seconds_per_epoch"]["mean"]
        rows.append([fmt(m["results"][k]["mean"]) if k in m["results"] else "—" for k in keys] + [fmt(cost)])
    widths = [2 + max(len(t), len(d), *(len(r[i]) for r in rows)) for i, (t, d) in enumerate(zip(titles, details,
                                                                                                 strict=True))]
    lines.append(" " * name_width + "".join(f"{t:>{w}}" for t, w in zip(titles, widths, strict=True)))
    lines.append(f"{'method':<{name_width}}" + "".join(f"{d:>{w}}" for d, w in zip(details, widths, strict=True)))
    lines += [f"{m['name']:<{name_width}}" + "".join(f"{v:>{w}}" for v, w in zip(r, widths, strict=True))
              for m, r in zip(methods, rows, strict=True)]
    seeds = sorted({len(m["seeds"]) for m in methods})
    lines.append(f"means over {'/'.join(map(str, seeds))} seed(s); intervals, every row and the figures: report.html")
    if summary["cells"]["missing"]:
        lines.append("missing: " + ", ".join(c["cell"] for c in summary["cells"]["missing"]))
    return "\n".join(lines)
