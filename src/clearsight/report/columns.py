"""What each result row is, for a reader: its group, a readable label, its family; and which rows head the table.

Nothing here knows a suite's keys. A row's group comes from its metric's registry metadata:

    robust            the metric takes the worst case over an attack list (`worst_case_over`: robust accuracy)
    certified         the metric needs interval bounds (`needs` "bounds")
    interpretability  the metric scores an attribution (`needs` "attribution" or "explainer")
    clean             the metric needs nothing and no gradient: a forward-only score (clean accuracy)
    other             the rest (neuron statistics, metrics this installation does not know)
    hygiene           the gradient-masking check rows (key "hygiene..."), never a table column

A label is the metric's name plus the options that tell its rows apart: the attribution, the norm and the
budget always (when the row has them, the metric's defaults filled in), any other option or sample limit only
when it differs between the metric's rows. So deletion_auc for gradient and for smoothgrad maps reads
"deletion auc: gradient" and "deletion auc: smoothgrad n=10", whatever the suite.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from clearsight.metrics import METRICS
from clearsight.results import row_key
from clearsight.specs import value_text

GROUPS = ("clean", "robust", "certified", "interpretability", "other")
SHOWN = ("attribution", "norm", "eps")  # the options that identify a row to a reader, shown even when shared
NORMS = {"linf": "ℓ∞", "l2": "ℓ2", "l1": "ℓ1"}
BUDGET = "eps"


def group_of(metric: str, key: str) -> str:
    """The group of a row (see the module docstring)."""
    if key.startswith("hygiene"):
        return "hygiene"
    if metric not in METRICS:
        return "other"
    meta = METRICS.meta(metric)
    needs = set(meta.get("needs", ()))
    if meta.get("worst_case_over"):
        return "robust"
    if "bounds" in needs:
        return "certified"
    if needs & {"attribution", "explainer"}:
        return "interpretability"
    if not needs and not meta.get("needs_grad", True):
        return "clean"
    return "other"


def _defaults(metric: str) -> dict[str, Any]:
    if metric not in METRICS:
        return {}
    return {k: v for k, v in METRICS.options(metric).items() if v is not inspect.Parameter.empty and v is not None}


def full_options(metric: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The row's options with the metric's defaults of the always-shown options filled in (a robust row without
    `norm` is l-inf, and reads so)."""
    defaults = _defaults(metric)
    return {**{k: defaults[k] for k in SHOWN if k in defaults}, **options}


def _option_text(name: str, value: Any) -> str:
    text = value_text(value)
    if name == "norm":
        return NORMS.get(text, text)
    if name == BUDGET:
        return f"ε={text}"
    if name == "attribution":
        return text.replace(":", " ").replace(",", ", ")
    if name == "samples":
        return f"first {text}"
    return f"{name}={text}"


def _order(name: str) -> tuple[int, str]:
    return (SHOWN.index(name), "") if name in SHOWN else (len(SHOWN), name)


def describe(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One descriptor per row (rows of distinct keys, in suite order): key, metric, options, higher_is_better,
    samples, group, title (the metric), detail (the distinguishing options), label, family (the key without the
    budget: rows of one family differ only in eps) and family_label, eps and norm (None when the row has none)."""
    texts = [{k: value_text(v) for k, v in _with_samples(r).items()} for r in rows]
    varying: dict[str, set[str]] = {}
    for metric in {r["metric"] for r in rows}:
        mine = [t for r, t in zip(rows, texts, strict=True) if r["metric"] == metric]
        names = {k for t in mine for k in t}
        varying[metric] = {k for k in names if len({t.get(k) for t in mine}) > 1}
    out = []
    for r in rows:
        options = _with_samples(r)
        shown = sorted((k for k in options if k in SHOWN or k in varying[r["metric"]]), key=_order)
        detail = ", ".join(_option_text(k, options[k]) for k in shown)
        family_detail = ", ".join(_option_text(k, options[k]) for k in shown if k != BUDGET)
        title = r["metric"].replace("_", " ")
        rest = {k: v for k, v in full_options(r["metric"], r.get("options", {})).items() if k != BUDGET}
        out.append({"key": r["key"], "metric": r["metric"], "options": r.get("options", {}),
                    "higher_is_better": bool(r.get("higher_is_better", True)), "samples": r.get("samples"),
                    "group": group_of(r["metric"], r["key"]), "title": title, "detail": detail,
                    "label": f"{title}: {detail}" if detail else title,
                    "family_label": f"{title}: {family_detail}" if family_detail else title,
                    "family": row_key(r["metric"], rest, samples=r.get("samples")),
                    "eps": _number(r.get("options", {}).get(BUDGET)),
                    "norm": value_text(options["norm"]) if "norm" in options else None})
    return out


def _with_samples(row: Mapping[str, Any]) -> dict[str, Any]:
    options = full_options(row["metric"], row.get("options", {}))
    return {**options, "samples": row["samples"]} if row.get("samples") is not None else options


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def table_columns(descriptors: Sequence[Mapping[str, Any]], means: Mapping[str, Sequence[float]]) -> list[str]:
    """The row keys of the summary table, grouped in GROUPS order.

    clean, interpretability and other rows: all of them, a metric's rows side by side. Robust rows: per metric
    and norm, the row at the largest budget, and of several there (pgd alone, pgd then apgd) the strongest
    attack: the lowest mean over methods. Certified rows: per family, the row at the largest budget. `means`
    holds each key's method means (NaN for a method without the row). The other budgets are in the complete
    table and the figures.
    """
    chosen: list[str] = []
    for group in GROUPS:
        mine = [d for d in descriptors if d["group"] == group]
        if group == "robust":
            chosen += _largest_budget(mine, lambda d: (d["metric"], d["norm"]), means)
        elif group == "certified":
            chosen += _largest_budget(mine, lambda d: d["family"], means)
        else:
            chosen += [d["key"] for d in _by_metric(mine)]
    return chosen


def _by_metric(descriptors: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    # a metric's rows side by side under one header, metrics in the order they first appear
    first: dict[str, int] = {}
    for i, d in enumerate(descriptors):
        first.setdefault(d["metric"], i)
    return sorted(descriptors, key=lambda d: first[d["metric"]])


def _largest_budget(descriptors: Sequence[Mapping[str, Any]], by: Any,
                    means: Mapping[str, Sequence[float]]) -> list[str]:
    keyed: dict[Any, list[Mapping[str, Any]]] = {}
    for d in descriptors:
        keyed.setdefault(by(d), []).append(d)
    out = []
    for members in keyed.values():
        top = max((d["eps"] for d in members if d["eps"] is not None), default=None)
        at_top = [d for d in members if d["eps"] == top] or members
        out.append(min(at_top, key=lambda d: _average(means.get(d["key"], ())))["key"])
    return out


def _average(values: Sequence[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else math.inf
