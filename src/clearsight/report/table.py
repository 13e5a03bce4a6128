"""The summary table (one row per method, sortable) and the complete table of every row key, as HTML.

Columns are the summary's `columns` (`clearsight.report.columns.table_columns`) plus training cost; a metric's
columns share one header with an arrow from higher_is_better, and each column below it is labelled by the
options that tell it apart. The best value of each column is marked (ties: all of them). Cells hold
"mean ± half-interval" (95%, Student t over seeds) where there are seeds, the mean alone otherwise. Each cell
carries its mean in data-value, which the page's script sorts by.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from itertools import groupby
from typing import Any

from clearsight.report.plots import descriptor, with_data
from clearsight.report.text import best_names, fmt, fmt_pm, ranked

COST = "train seconds per epoch"  # the cost column: not a result row, from the cells' logs


def _arrow(higher_is_better: bool) -> str:
    return "↑" if higher_is_better else "↓"


def _columns(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The table's columns: {key, group, title, detail, higher_is_better, values: {method: (mean, half)}}."""
    methods = with_data(summary)
    out = []
    for key in summary["columns"]:
        d = descriptor(summary, key)
        values = {m["name"]: (m["results"][key]["mean"], m["results"][key]["half_interval"])
                  for m in methods if key in m["results"]}
        out.append({"key": key, "group": d["group"], "title": d["title"], "detail": d["detail"],
                    "higher_is_better": d["higher_is_better"], "values": values,
                    "best": best_names(ranked(methods, key, higher_is_better=d["higher_is_better"]))})
    relative = relative_cost(summary)
    cost = {m["name"]: ((m["train"]["relative"], m["train"]["relative_half_interval"]) if relative else
                        (m["train"]["seconds_per_epoch"]["mean"], m["train"]["seconds_per_epoch"]["half_interval"]))
            for m in methods if m["train"]["seconds_per_epoch"]["mean"] is not None}
    if cost:
        ranking = sorted(((n, v[0]) for n, v in cost.items() if v[0] is not None), key=lambda r: r[1])
        best = [n for n, v in ranking if v == ranking[0][1]] if ranking else []
        out.append({"key": COST, "group": "cost", "title": "train s/epoch",
                    "detail": "× standard" if relative else "seconds", "higher_is_better": False,
                    "values": cost, "best": best})
    for c in out:  # a column where every method has the same value marks nothing
        if len(c["best"]) == len(c["values"]) or len(c["values"]) < 2:
            c["best"] = []
    return out


def relative_cost(summary: Mapping[str, Any]) -> bool:
    """Whether training cost reads relative to standard (a standard method with logged seconds), else seconds."""
    return any(m["train"]["relative"] is not None for m in summary["methods"])


def summary_table(summary: Mapping[str, Any]) -> str:
    """The sortable summary table (id "summary"): first column the method, then one column per `_columns`."""
    methods = with_data(summary)
    if not methods:
        return "<p class='absent'>No method has a complete cell yet: the table is empty.</p>"
    columns = _columns(summary)
    top = ["<th rowspan='2' data-col='0' data-kind='text' title='click to sort'>method</th>"]
    bottom = []
    index = 1
    for (group, title), members in groupby(columns, key=lambda c: (c["group"], c["title"])):
        run = list(members)
        arrow = _arrow(run[0]["higher_is_better"])
        hint = ("higher" if run[0]["higher_is_better"] else "lower") + " is better"
        if len(run) == 1 and not run[0]["detail"]:
            top.append(_sortable(run[0], index, f"{title} {arrow}", hint, rowspan=2))
            index += 1
            continue
        top.append(f"<th colspan='{len(run)}' class='metric g-{group}' title='{hint}'>"
                   f"{html.escape(title)} {arrow}</th>")
        for c in run:
            bottom.append(_sortable(c, index, c["detail"], hint))
            index += 1
    body = []
    for m in methods:
        cells = [f"<td data-value='{html.escape(m['name'], quote=True)}' class='name'>{html.escape(m['name'])}</td>"]
        for c in columns:
            cells.append(_cell(c, m["name"]))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return ("<div class='scroll'><table id='summary' class='sortable'><thead><tr>" + "".join(top) + "</tr><tr>"
            + "".join(bottom) + "</tr></thead><tbody>" + "".join(body) + "</tbody></table></div>")


def _sortable(column: Mapping[str, Any], index: int, text: str, hint: str, *, rowspan: int = 1) -> str:
    span = f" rowspan='{rowspan}'" if rowspan > 1 else ""
    tip = html.escape(f"{column['key']} ({hint}); click to sort, best first", quote=True)
    better = "high" if column["higher_is_better"] else "low"
    return (f"<th{span} data-col='{index}' data-kind='number' data-better='{better}' "
            f"class='g-{column['group']}' title='{tip}'>{html.escape(text)}</th>")


def _cell(column: Mapping[str, Any], method: str) -> str:
    if method not in column["values"] or column["values"][method][0] is None:
        return "<td data-value='' class='missing'>—</td>"
    mean, half = column["values"][method]
    # what the page's parseFloat reads: NaN (no value) sorts last, an infinite bound as Infinity
    value = "" if math.isnan(mean) else ("Infinity" if mean > 0 else "-Infinity") if math.isinf(mean) else repr(mean)
    best = method in column["best"]
    mark = " <span class='mark' aria-label='best'>★</span>" if best else ""
    cls = f"g-{column['group']}" + (" best" if best else "")
    return f"<td data-value='{value}' class='{cls}'>{html.escape(fmt_pm(mean, half))}{mark}</td>"


def table_columns_for_text(summary: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(key, label, higher_is_better) of the table's result columns, for the table's sentences."""
    return [(k, (d := descriptor(summary, k))["label"], d["higher_is_better"]) for k in summary["columns"]]


def complete_table(summary: Mapping[str, Any]) -> str:
    """Every row key (rows) by method (columns), each cell the mean ± half-interval with the per-seed values in
    its tooltip; collapsed in a <details> element."""
    methods = with_data(summary)
    if not methods or not summary["rows"]:
        return ""
    head = "".join(f"<th>{html.escape(m['name'])}</th>" for m in methods)
    body = []
    for d in summary["rows"]:
        cells = [f"<th class='key' title='{html.escape(d['key'], quote=True)}'>{html.escape(d['label'])} "
                 f"{_arrow(d['higher_is_better'])}</th>"]
        for m in methods:
            e = m["results"].get(d["key"])
            if e is None:
                cells.append("<td class='missing'>—</td>")
                continue
            seeds = ", ".join(f"seed {s}: {fmt(v)}" for s, v in zip(e["seeds"], e["values"], strict=True))
            cells.append(f"<td title='{html.escape(seeds, quote=True)}'>"
                         f"{html.escape(fmt_pm(e['mean'], e['half_interval']))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<details><summary>Every result row ({len(summary['rows'])} keys; hover a value for its seeds)"
            f"</summary><div class='scroll'><table id='complete'><thead><tr><th>row</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div></details>")


def hygiene_list(summary: Mapping[str, Any]) -> str:
    """The gradient-masking warnings of each method (hygiene rows and robust rows), or why there are none."""
    methods = with_data(summary)
    checked = any(d["group"] == "hygiene" for d in summary["rows"])
    flagged = [m for m in methods if m["hygiene"]]
    if not flagged:
        return ("<p>No hygiene warning: the gradient-masking checks found nothing suspicious.</p>" if checked else
                "<p>The suite ran no hygiene checks, so gradient masking was not looked for.</p>")
    items = []
    for m in flagged:
        texts = _unique(f"seed {w['seed']}, {descriptor(summary, w['key'])['label']}: {w['text']}"
                        for w in m["hygiene"])
        items.append(f"<li><b>{html.escape(m['name'])}</b><ul>"
                     + "".join(f"<li>{html.escape(t)}</li>" for t in texts) + "</ul></li>")
    return ("<p>These warnings are signs of gradient masking: a robust accuracy next to them may overstate the "
            "robustness (a stronger or gradient-free attack may find more).</p><ul class='hygiene'>"
            + "".join(items) + "</ul>")


def _unique(texts: Sequence[str] | Any) -> list[str]:
    return list(dict.fromkeys(texts))
