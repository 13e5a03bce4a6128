"""The report's numeric figures, each from the summary alone: robustness vs interpretability, deletion and
insertion curves, accuracy vs eps, certified fraction vs eps, training cost.

Every figure picks its data from the rows' groups and metadata (`clearsight.report.columns`), never from a
suite's keys, and comes back `absent` with the reason when its data are not in the study.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.ticker import MaxNLocator

from clearsight.report.plots import Figure, absent, colour, descriptor, entry, grid, legend, new_figure, png, with_data
from clearsight.report.text import compare, fmt, fmt_pm

MAX_PANELS = 8  # curves and interpretability panels: more would be unreadable at report width
MAX_SCATTER = 4
LEGEND = 2.0  # inches on the right for the methods' legend


def _spread(summary: Mapping[str, Any], key: str) -> float:
    means = [e["mean"] for m in with_data(summary) if (e := entry(m, key)) is not None]
    finite = [v for v in means if math.isfinite(v)]
    return max(finite) - min(finite) if len(finite) > 1 else 0.0


def scatter_axes(summary: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    """The x row (robustness) and the y rows (interpretability) of the scatter.

    x: of the table's robust columns (each norm at its largest budget), the one that separates the methods most
    (the largest range of method means); certified columns when there is no robust row. y: the first row of each
    interpretability metric in suite order (at most MAX_SCATTER metrics), so every panel is a different metric.
    """
    columns = [descriptor(summary, k) for k in summary["columns"]]
    for group in ("robust", "certified"):
        candidates = [d["key"] for d in columns if d["group"] == group]
        if candidates:
            x = max(candidates, key=lambda k: _spread(summary, k))  # max keeps the first of equal spreads
            break
    else:
        x = None
    ys: dict[str, str] = {}
    for d in summary["rows"]:
        if d["group"] == "interpretability" and d["metric"] not in ys and len(ys) < MAX_SCATTER:
            ys[d["metric"]] = d["key"]
    return x, list(ys.values())


def scatter(summary: Mapping[str, Any]) -> Figure:
    title = "Robustness against interpretability"
    x, ys = scatter_axes(summary)
    methods = with_data(summary)
    if x is None or not ys:
        what = "robust-accuracy or certified" if x is None else "interpretability"
        return absent("scatter", title, f"the study has no {what} rows")
    if len(methods) < 2:
        return absent("scatter", title, "fewer than two methods have complete cells: nothing to compare")
    dx = descriptor(summary, x)
    rows, cols = grid(len(ys), columns=2)
    fig = new_figure(5.2 * cols + LEGEND, 4.0 * rows)
    says = []
    for i, y in enumerate(ys):
        dy = descriptor(summary, y)
        ax = fig.add_subplot(rows, cols, i + 1)
        points = []
        for m in methods:
            ex, ey = entry(m, x), entry(m, y)
            if ex is None or ey is None:
                continue
            points.append((m["name"], ex["mean"], ey["mean"]))
            ax.errorbar(ex["mean"], ey["mean"], xerr=ex["half_interval"], yerr=ey["half_interval"], fmt="o",
                        color=colour(summary["methods"], m["name"]), label=m["name"], capsize=3)
        ax.set_xlabel(f"{dx['label']} {'↑' if dx['higher_is_better'] else '↓'}")
        ax.set_ylabel(f"{dy['label']} {'↑' if dy['higher_is_better'] else '↓'}")
        ax.grid(alpha=0.3)
        says.append(_front(points, dx, dy))
    legend(fig)
    return Figure("scatter", title, [png(fig)], says)


def _front(points: Sequence[tuple[str, float, float]], dx: Mapping[str, Any], dy: Mapping[str, Any]) -> str:
    """The methods no other method beats on both axes (directions from higher_is_better), and the rank
    agreement of the two axes over methods."""
    sx, sy = (1 if dx["higher_is_better"] else -1), (1 if dy["higher_is_better"] else -1)
    front = [p[0] for p in points
             if not any(sx * q[1] >= sx * p[1] and sy * q[2] >= sy * p[2] and (q[1], q[2]) != (p[1], p[2])
                        for q in points)]
    rho = spearman([sx * p[1] for p in points], [sy * p[2] for p in points])
    trend = ("" if rho is None else
             f" Across the {len(points)} methods the two go {'together' if rho > 0 else 'against each other'}"
             f"{'' if abs(rho) >= 0.5 else ', weakly'} (Spearman ρ = {rho:.2f}, both axes oriented so that "
             "better is higher).")
    return f"{dy['label']} against {dx['label']}: on both at once, no method beats {', '.join(front)}.{trend}"


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None with fewer than 3 points or a constant axis."""
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else None


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks


def curves(summary: Mapping[str, Any]) -> Figure:
    title = "Deletion and insertion curves"
    methods = with_data(summary)
    panels = [(d, name) for d in summary["rows"] for name in _curve_names(methods, d["key"])]
    if not panels:
        return absent("curves", title, "no row of the study has curves (deletion_auc, insertion_auc, ...)")
    shown = panels[:MAX_PANELS]
    rows, cols = grid(len(shown))
    fig = new_figure(4.2 * cols + LEGEND, 3.3 * rows)
    for i, (d, name) in enumerate(shown):
        ax = fig.add_subplot(rows, cols, i + 1)
        for m in methods:
            e = entry(m, d["key"])
            curve = (e or {}).get("curve", {}).get(name)
            if curve:
                ax.plot([j / (len(curve) - 1) if len(curve) > 1 else 0.0 for j in range(len(curve))], curve,
                        color=colour(summary["methods"], m["name"]), label=m["name"])
        ax.set_title(f"{name}: {d['detail'] or d['title']}", fontsize="medium")
        ax.set_xlabel("fraction of features changed")
        ax.set_ylabel("class probability" if d["options"].get("output", "probability") == "probability"
                      else "class score")
        ax.grid(alpha=0.3)
    says = [s for d in dict.fromkeys(d["key"] for d, _ in shown)
            if (s := compare(descriptor(summary, d)["label"], methods, d,
                             higher_is_better=descriptor(summary, d)["higher_is_better"],
                             standard=summary["standard"]))]
    legend(fig)
    if len(panels) > len(shown):
        says.append(f"The first {len(shown)} of {len(panels)} curves are drawn; every area is in the table.")
    return Figure("curves", title, [png(fig)], says)


def _curve_names(methods: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    names: dict[str, None] = {}
    for m in methods:
        e = entry(m, key)
        names.update(dict.fromkeys((e or {}).get("curve", {})))
    return list(names)


def families(summary: Mapping[str, Any], group: str, *, higher_is_better: bool | None = None
             ) -> dict[str, list[Mapping[str, Any]]]:
    """Rows of `group` that have a budget, by family (rows differing only in eps), each sorted by eps."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for d in summary["rows"]:
        if d["group"] == group and d["eps"] is not None and (
                higher_is_better is None or d["higher_is_better"] == higher_is_better):
            out.setdefault(d["family"], []).append(d)
    return {k: sorted(v, key=lambda d: d["eps"]) for k, v in out.items()}


def versus_eps(summary: Mapping[str, Any], *, name: str, title: str, group: str, ylabel: str,
               zero: str | None, missing: str) -> Figure:
    """Mean value against eps, a panel per family and a line per method (bands: the 95% intervals); `zero` is
    a row drawn at eps 0 (clean accuracy under the attacks' curves)."""
    fams = families(summary, group, higher_is_better=True)
    methods = with_data(summary)
    if not fams or not methods:
        return absent(name, title, missing)
    rows, cols = grid(len(fams), columns=2)
    fig = new_figure(5.2 * cols + LEGEND, 3.8 * rows)
    says = []
    for i, members in enumerate(fams.values()):
        ax = fig.add_subplot(rows, cols, i + 1)
        for m in methods:
            start = entry(m, zero) if zero is not None and members[0]["eps"] > 0 else None
            points = [(0.0, start)] if start is not None else []
            points += [(d["eps"], e) for d in members if (e := entry(m, d["key"])) is not None]
            if not points:
                continue
            xs, means = [p[0] for p in points], [p[1]["mean"] for p in points]
            halves = [p[1]["half_interval"] or 0.0 for p in points]
            c = colour(summary["methods"], m["name"])
            ax.plot(xs, means, "o-", color=c, label=m["name"])
            ax.fill_between(xs, [a - h for a, h in zip(means, halves, strict=True)],
                            [a + h for a, h in zip(means, halves, strict=True)], color=c, alpha=0.15, linewidth=0)
        ax.set_title(members[0]["family_label"], fontsize="medium")
        ax.set_xlabel("ε (0: clean)" if zero and members[0]["eps"] > 0 else "ε")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(6))
        ax.grid(alpha=0.3)
        top = members[-1]
        says.append(compare(f"At the largest ε, {top['label']}", methods, top["key"], higher_is_better=True,
                            standard=summary["standard"]) or "")
    legend(fig)
    return Figure(name, title, [png(fig)], [s for s in says if s])


def accuracy_vs_eps(summary: Mapping[str, Any]) -> Figure:
    clean = next((d["key"] for d in summary["rows"] if d["group"] == "clean"), None)
    return versus_eps(summary, name="eps", title="Accuracy under attack against ε", group="robust",
                      ylabel="robust accuracy", zero=clean, missing="the study has no robust-accuracy rows")


def certified_vs_eps(summary: Mapping[str, Any]) -> Figure:
    # the higher-is-better certificates are fractions of samples certified; bound magnitudes (delta_bound) are
    # in the table, not on a 0..1 axis
    return versus_eps(summary, name="certified", title="Certified fraction against ε", group="certified",
                      ylabel="certified fraction", zero=None,
                      missing="the study has no certified rows (a suite with certified_accuracy rows adds them)")


def cost(summary: Mapping[str, Any]) -> Figure:
    title = "Training cost"
    methods = [m for m in with_data(summary) if m["train"]["seconds_per_epoch"]["mean"] is not None]
    if not methods:
        return absent("cost", title, "no complete cell logged the seconds of its epochs")
    relative = all(m["train"]["relative"] is not None for m in methods)
    values = [m["train"]["relative"] if relative else m["train"]["seconds_per_epoch"]["mean"] for m in methods]
    errors = [(m["train"]["relative_half_interval"] if relative else m["train"]["seconds_per_epoch"]["half_interval"])
              or 0.0 for m in methods]
    fig = new_figure(max(5.0, 0.7 * len(methods) + 2), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(methods)), values, yerr=errors, capsize=3,
           color=[colour(summary["methods"], m["name"]) for m in methods])
    ax.set_xticks(range(len(methods)), [m["name"] for m in methods], rotation=30, ha="right")
    ax.set_ylabel("seconds per epoch / standard's" if relative else "seconds per epoch")
    ax.set_ylim(bottom=0.0)  # a wide interval of two seeds would otherwise draw negative seconds
    if relative:
        ax.axhline(1.0, color="#444444", linewidth=0.8, linestyle="--")
    ax.grid(alpha=0.3, axis="y")
    order = sorted(range(len(methods)), key=lambda i: values[i])
    unit = "× standard" if relative else " s per epoch"
    says = [f"Cheapest: {methods[order[0]]['name']} ({fmt(values[order[0]])}{unit}); most expensive: "
            f"{methods[order[-1]]['name']} ({fmt(values[order[-1]])}{unit})."]
    if not relative:
        says.append("No standard method has logged seconds in a complete cell, so seconds are absolute.")
    says.append("Seconds are wall-clock training time per epoch from each cell's log (mean over epochs and seeds, "
                "± the 95% interval over seeds); cells trained on other machines or at once with other work "
                "are not comparable.")
    return Figure("cost", title, [png(fig)], says)


def table_cost_sentence(summary: Mapping[str, Any]) -> str | None:
    """The cost column's sentence: the dearest and the cheapest method other than standard, against standard."""
    methods = [m for m in with_data(summary) if m["train"]["relative"] is not None and m["name"] != summary["standard"]]
    if not methods:
        return None
    ranking = sorted(methods, key=lambda m: m["train"]["relative"])
    dear, cheap = ranking[-1], ranking[0]

    def times(m: Mapping[str, Any]) -> str:
        return fmt_pm(m["train"]["relative"], m["train"]["relative_half_interval"]) + " ×"

    text = f"Training cost against standard's seconds per epoch: {dear['name']} takes {times(dear)}"
    if cheap is not dear:
        text += f", {cheap['name']} the least ({times(cheap)})"
    return text + "."
