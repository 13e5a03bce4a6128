"""What every report figure shares: the Figure record, PNG embedding, method colours, summary look-ups.

Figures are drawn on matplotlib's object API with the Agg canvas (no pyplot), so rendering a report never
touches the caller's matplotlib backend or global figure state.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

DPI = 100


@dataclass(frozen=True)
class Figure:
    """One report figure: its PNGs (base64) and what they say, or the reason it is left out (`absent`)."""

    name: str
    title: str
    images: list[str] = field(default_factory=list)
    says: list[str] = field(default_factory=list)
    absent: str | None = None


def absent(name: str, title: str, reason: str) -> Figure:
    return Figure(name, title, absent=reason)


def new_figure(width: float, height: float) -> MplFigure:
    fig = MplFigure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png(fig: MplFigure) -> str:
    """The figure as a base64 PNG (no timestamp or software metadata, so a re-render gives the same bytes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def colour(methods: Sequence[Mapping[str, Any]], name: str) -> str:
    """The method's colour, the same in every figure (its place in the study's method order)."""
    names = [m["name"] for m in methods]
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]
    return palette[names.index(name) % len(palette)] if name in names else "#000000"


def legend(fig: MplFigure) -> None:
    """One legend of every method drawn, outside the panels (on the right), so that no panel's points hide it."""
    seen: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside right upper", fontsize="small")


def grid(count: int, *, columns: int = 3) -> tuple[int, int]:
    cols = min(columns, count)
    return math.ceil(count / cols), cols


def entry(method: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """The method's result on row `key`, or None when it has none or its mean is undefined."""
    found = method["results"].get(key)
    return found if found is not None and not math.isnan(found["mean"]) else None


def with_data(summary: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The methods that have at least one complete cell, in the study's order."""
    return [m for m in summary["methods"] if m["seeds"]]


def descriptor(summary: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    return next(d for d in summary["rows"] if d["key"] == key)
