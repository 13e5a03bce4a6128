"""The report's words, generated from the numbers: number formats and "what this says" sentences.

A comparison names the best method on a row (direction from `higher_is_better`), by how much it differs from
the standard method (or, when standard is the best or absent, from the runner-up), and whether the two 95%
intervals overlap: overlapping intervals read "indistinguishable at these seeds"; without an interval (one
seed) the difference is said to be untested.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def fmt(value: float | None) -> str:
    """A number for a reader: 3 significant digits, "n/a" for missing or NaN, ∞ for infinite bounds."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.3g}".replace("-", "−")


def fmt_pm(mean: float | None, half: float | None) -> str:
    """"mean ± half-interval", or the mean alone without an interval."""
    return fmt(mean) if half is None else f"{fmt(mean)} ± {fmt(half)}"


def signed(value: float) -> str:
    return ("+" if value > 0 else "") + fmt(value)


def ranked(methods: Sequence[Mapping[str, Any]], key: str, *, higher_is_better: bool
           ) -> list[tuple[str, float, float | None]]:
    """(method, mean, half-interval) of the methods with a defined mean on row `key`, best first (stable: ties
    keep the study's method order)."""
    out = []
    for m in methods:
        entry = m["results"].get(key)
        if entry is not None and not math.isnan(entry["mean"]):
            out.append((m["name"], float(entry["mean"]), entry["half_interval"]))
    return sorted(out, key=lambda r: -r[1] if higher_is_better else r[1])


def best_names(ranking: Sequence[tuple[str, float, float | None]]) -> list[str]:
    """Every method whose mean equals the best one (ties are all best)."""
    return [name for name, mean, _ in ranking if ranking and mean == ranking[0][1]]


def overlap(a: tuple[float, float | None], b: tuple[float, float | None]) -> bool | None:
    """Whether the intervals mean ± half of a and b overlap; None when either has no interval."""
    if a[1] is None or b[1] is None:
        return None
    return abs(a[0] - b[0]) <= a[1] + b[1]


def _verdict(a: tuple[float, float | None], b: tuple[float, float | None]) -> str:
    if a[0] == b[0]:
        return "equal"
    found = overlap(a, b)
    if found is None:
        return "one seed, no interval: the difference is untested"
    return "indistinguishable at these seeds" if found else "the 95% intervals do not overlap"


def compare(label: str, methods: Sequence[Mapping[str, Any]], key: str, *, higher_is_better: bool,
            standard: str | None) -> str | None:
    """One sentence on row `key`: the best method, against standard (or the runner-up). None without values."""
    ranking = ranked(methods, key, higher_is_better=higher_is_better)
    if not ranking:
        return None
    direction = "higher" if higher_is_better else "lower"
    head = f"{label} ({direction} is better)"
    if len(ranking) == 1:
        return f"{head}: only {ranking[0][0]} has a value, {fmt_pm(ranking[0][1], ranking[0][2])}."
    tied = best_names(ranking)
    if len(tied) == len(ranking):
        return f"{head}: every method has {fmt(ranking[0][1])}."
    best = ranking[0]
    lead = f"{head}: best {' and '.join(tied)} with {fmt_pm(best[1], best[2])}"
    base = next((r for r in ranking if r[0] == standard), None)
    if base is not None and base[0] not in tied:
        return (f"{lead}, {signed(best[1] - base[1])} against standard ({fmt_pm(base[1], base[2])}), "
                f"{_verdict(best[1:], base[1:])}.")
    other = ranking[len(tied)]  # standard is among the best, or there is none: the runner-up
    return (f"{lead}; next {other[0]} with {fmt_pm(other[1], other[2])} ({signed(other[1] - best[1])}), "
            f"{_verdict(best[1:], other[1:])}.")


def wins(methods: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, bool]]) -> str | None:
    """Which method is best in the most of `columns` ((key, higher_is_better) pairs), counting ties for all."""
    counts: dict[str, int] = {}
    scored = 0
    for key, higher in columns:
        ranking = ranked(methods, key, higher_is_better=higher)
        if len(ranking) < 2 or len(best_names(ranking)) == len(ranking):
            continue
        scored += 1
        for name in best_names(ranking):
            counts[name] = counts.get(name, 0) + 1
    if not counts:
        return None
    top = max(counts.values())
    leaders = [m["name"] for m in methods if counts.get(m["name"]) == top]
    return (f"{' and '.join(leaders)} {'is' if len(leaders) == 1 else 'are'} best in {top} of the {scored} columns "
            "where the methods differ (best values are marked).")
