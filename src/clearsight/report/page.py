"""report.html: one self-contained page (figures as data: PNGs, inline CSS and script, nothing fetched).

`render(study_dir)` is what `clearsight report DIR` calls: it collects the complete cells (writing results.csv
and summary.json), draws the figures and writes report.html, each file atomically. It reads files only; it never
trains, attacks or attributes. A content-security policy in the page forbids every external load, so a page
that opens offline is also one that cannot leak a request.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clearsight import __version__, io
from clearsight.report.collect import collect
from clearsight.report.figures import accuracy_vs_eps, certified_vs_eps, cost, curves, scatter, table_cost_sentence
from clearsight.report.plots import Figure, with_data
from clearsight.report.saliency import saliency
from clearsight.report.table import complete_table, hygiene_list, summary_table, table_columns_for_text
from clearsight.report.text import compare, wins

REPORT_FILE = "report.html"

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.meta { color: #555; } .absent { color: #8a5a00; font-style: italic; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td.name, th.key, #summary th[data-col='0'] { text-align: left; font-weight: 600; }
#summary th[data-col] { cursor: pointer; } #summary th[aria-sort] { background: #dde8f5; }
#summary th[aria-sort='descending']::after { content: ' ▼'; }
#summary th[aria-sort='ascending']::after { content: ' ▲'; }
td.best { background: #e3f4e1; font-weight: 600; } .mark { color: #2a7a2a; }
td.missing { color: #999; text-align: center; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
.says { background: #f8f8fb; border-left: 3px solid #8aa; padding: 0.4em 0.9em; }
ul.hygiene li { margin: 0.2em 0; } #methods td { text-align: left; }
"""

# Sort the summary table by a clicked header: numbers by data-value, best first on the first click (the column's
# data-better), then reversed; methods without a value stay last either way.
SCRIPT = """
(function () {
  var table = document.getElementById('summary');
  if (!table) { return; }
  var heads = table.querySelectorAll('th[data-col]');
  function value(row, col, kind) {
    var raw = row.children[col].getAttribute('data-value');
    if (kind === 'text') { return raw; }
    return raw === '' || raw === null ? null : parseFloat(raw);
  }
  function sortBy(th) {
    var col = parseInt(th.getAttribute('data-col'), 10), kind = th.getAttribute('data-kind');
    var first = kind === 'text' || th.getAttribute('data-better') === 'low' ? 'ascending' : 'descending';
    var now = th.getAttribute('aria-sort');
    var order = now ? (now === 'ascending' ? 'descending' : 'ascending') : first;
    var sign = order === 'ascending' ? 1 : -1;
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, col, kind), y = value(b, col, kind);
      if (x === null || y === null) { return (x === null) - (y === null); }
      if (kind === 'text') { return sign * x.localeCompare(y); }
      return sign * (x - y);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', order);
  }
  Array.prototype.forEach.call(heads, function (th) {
    th.addEventListener('click', function () { sortBy(th); });
  });
})();
"""

POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def render(study_dir: str | Path) -> Path:
    """Collect `study_dir`'s complete cells and write its results.csv, summary.json and report.html.

    Returns the path of report.html. Raises ConfigError when `study_dir` is not a study directory.
    """
    folder = Path(study_dir)
    summary = collect(folder)
    out = folder / REPORT_FILE
    io.write_text(out, page(summary, figures(summary, folder)))
    return out


def figures(summary: Mapping[str, Any], folder: Path) -> list[Figure]:
    return [saliency(summary, folder), scatter(summary), curves(summary), accuracy_vs_eps(summary),
            certified_vs_eps(summary), cost(summary)]


def _says(sentences: Sequence[str]) -> str:
    if not sentences:
        return ""
    return ("<div class='says'><b>What this says.</b><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in sentences)
            + "</ul></div>")


def _figure(fig: Figure) -> str:
    head = f"<h2 id='fig-{fig.name}'>{html.escape(fig.title)}</h2>"
    if fig.absent is not None:
        return head + f"<p class='absent'>Left out: {html.escape(fig.absent)}.</p>"
    images = "".join(f"<figure><img alt='{html.escape(fig.title, quote=True)}' src='data:image/png;base64,{b64}'>"
                     "</figure>" for b64 in fig.images)
    return head + images + _says(fig.says)


def table_says(summary: Mapping[str, Any]) -> list[str]:
    """The table's sentences: who wins most columns, then one comparison per column and the cost."""
    methods = with_data(summary)
    columns = table_columns_for_text(summary)
    out = [s for s in [wins(methods, [(k, h) for k, _, h in columns])] if s]
    out += [s for k, label, h in columns
            if (s := compare(label, methods, k, higher_is_better=h, standard=summary["standard"]))]
    if (c := table_cost_sentence(summary)) is not None:
        out.append(c)
    if summary["standard"] is None:
        out.append("No method trains with the standard objective, so differences are against the runner-up and "
                   "training cost is in seconds.")
    return out


def _cells(summary: Mapping[str, Any]) -> str:
    cells = summary["cells"]
    done = len(cells["complete"])
    text = f"<p>{done} of {cells['expected']} cells complete.</p>"
    if cells["missing"]:
        text += ("<p>Missing cells (left out of every number below; re-run the study, or run `clearsight report` "
                 "again when the other shards finish):</p><ul id='missing'>"
                 + "".join(f"<li>{html.escape(m['cell'])}: {html.escape(m['reason'])}</li>" for m in cells["missing"])
                 + "</ul>")
    return text


def _methods(summary: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><td class='name'>{html.escape(m['name'])}</td><td>{html.escape(str(m['objective']))}</td>"
                   f"<td>{html.escape(', '.join(map(str, m['seeds'])) or 'none')}</td>"
                   f"<td>{html.escape(m['description'])}</td></tr>"
                   for m in summary["methods"])
    return ("<table id='methods'><thead><tr><th>method</th><th>objective</th><th>complete seeds</th>"
            f"<th>description</th></tr></thead><tbody>{rows}</tbody></table>")


def _name(section: Any) -> str:
    return str(section.get("name", "")) if isinstance(section, Mapping) else str(section or "")


def page(summary: Mapping[str, Any], figs: Sequence[Figure]) -> str:
    """The whole HTML document."""
    study = summary["study"]
    title = f"clearsight study {_name(study) or ''}".strip()
    meta = (f"dataset {_name(study.get('dataset'))}, model {_name(study.get('model'))}, seeds "
            f"{', '.join(map(str, study.get('seeds') or []))}; clearsight {__version__}")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{POLICY}\">",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<link rel='icon' href='data:,'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='meta'>{html.escape(meta)}</p>",
        _cells(summary),
        "<h2 id='table'>Summary</h2>",
        "<p>One row per method: mean over the complete seeds ± the half-width of the 95% interval (Student t; the "
        "mean alone with one seed). Arrows give the better direction, ★ the best value of a column; click a "
        "header to sort.</p>",
        summary_table(summary), _says(table_says(summary)),
        "<h2 id='hygiene'>Hygiene warnings</h2>", hygiene_list(summary),
        *(_figure(f) for f in figs),
        "<h2 id='rows'>All rows</h2>", complete_table(summary) or "<p class='absent'>No rows yet.</p>",
        "<h2 id='methods-list'>Methods</h2>", _methods(summary),
        "<p class='meta'>Beside this file: results.csv (every method, seed and row) and summary.json (these "
        "numbers). `clearsight report DIR` re-renders this page from the stored results.</p>",
        f"<script>{SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts) + "\n"
