"""Print a markdown table of a finished study's results: the tables of EXPERIMENTS.md come from this script.

    python scripts/claims.py runs/paper-mnist --methods standard,pgd-at,ir --against standard \\
        --row accuracy --row robust_accuracy/attack=pgd+apgd:loss=dlr,steps=50/eps=0.1/norm=linf

One line per method, one column per `--row` (a prefix of a row key of DIR/summary.json that matches exactly one
row; `clearsight report DIR` lists the keys under "All rows"). Several study directories pool their seeds: a
method's values for one row key are joined over the studies that have it (their rows must be defined alike, which
the key checks, and their methods trained alike, which is the caller's to ensure; a seed present in two studies
counts once and must have the same value in both, as a baseline cell repeated in a follow-up study does). A cell is
the mean over the method's seeds and the half-width of its 95% Student-t interval, as the report shows them. With
`--against M`, each cell also gives the difference to method M and its 95% interval over seeds, paired by seed: the
two cells of one seed share the initial weights, the data order and the evaluated images, so pairing removes their
common noise; with fewer than two common seeds there is no interval. Differences whose interval excludes 0 are
marked with *. A seed whose value is undefined (NaN: every sample of the row had no value) is left out of the mean,
and the cell says "[2 of 3 seeds]"; a difference over fewer seeds than the cell's mean (M lacks a seed, or has it
undefined) says how many pairs it has, "(+0.01 ± 0.02 [2 pairs])".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from clearsight.report.stats import mean_interval


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, nargs="+", help="study directories (with summary.json); seeds pool")
    parser.add_argument("--methods", required=True, help="comma-separated method names, in table order")
    parser.add_argument("--row", action="append", required=True, help="a row key prefix (repeat for more)")
    parser.add_argument("--against", help="a method to give paired differences against")
    parser.add_argument("--labels", help="comma-separated column titles, one per --row (default: the rows' labels)")
    parser.add_argument("--digits", type=int, default=3, help="significant digits (default 3)")
    args = parser.parse_args(argv)
    try:
        summaries = [json.loads((d / "summary.json").read_text()) for d in args.study]
        methods = _pooled(summaries)
        rows = {r["key"]: r for summary in summaries for r in summary["rows"]}
        names = args.methods.split(",")
        keys = [_key(prefix, list(rows)) for prefix in args.row]
        unknown = [n for n in names + ([args.against] if args.against else []) if n not in methods]
        if unknown:
            raise ValueError(f"no method {unknown} in {[str(d) for d in args.study]}; there are {sorted(methods)}")
        labels = args.labels.split(",") if args.labels else [rows[k]["label"] for k in keys]
        if len(labels) != len(keys):
            raise ValueError(f"--labels gives {len(labels)} titles for {len(keys)} rows; give one per --row")
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("| method | " + " | ".join(labels) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name in names:
        cells = [_cell(methods[name]["results"].get(k), methods[args.against]["results"].get(k)
                       if args.against and name != args.against else None, args.digits) for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


def _pooled(summaries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{method: {"results": {key: {"seeds", "values", "mean", "half_interval"}}}} over every summary."""
    methods: dict[str, dict[str, Any]] = {}
    for summary in summaries:
        for method in summary["methods"]:
            results = methods.setdefault(method["name"], {"results": {}})["results"]
            for key, entry in method["results"].items():
                pooled = results.setdefault(key, {"seeds": [], "values": []})
                have = dict(zip(pooled["seeds"], pooled["values"], strict=True))
                for seed, text in zip(entry["seeds"], entry["values"], strict=True):
                    value = float(text)  # summary.json writes non-finite values as "nan", "inf"
                    if seed not in have:
                        pooled["seeds"].append(seed)
                        pooled["values"].append(value)
                    elif have[seed] != value and not (math.isnan(have[seed]) and math.isnan(value)):
                        raise ValueError(f"{method['name']} seed {seed} has {key} = {have[seed]} in one study and "
                                         f"{value} in another; pool only studies whose shared cells agree")
    for method in methods.values():
        for entry in method["results"].values():
            entry["mean"], entry["half_interval"] = mean_interval(entry["values"])
    return methods


def _key(prefix: str, keys: list[str]) -> str:
    found = [k for k in keys if k.startswith(prefix)]
    if len(found) != 1:
        raise ValueError(f"row prefix {prefix!r} matches {len(found)} rows ({found[:4]}); give one that matches one")
    return found[0]


def _fmt(value: float, half: float | None, digits: int, *, sign: bool = False) -> str:
    if half is not None and half <= 1e-12 * abs(value):  # seeds that agree exactly leave rounding noise
        half = 0.0
    return f"{value:{'+' if sign else ''}.{digits}g}" + ("" if half is None else f" ± {half:.2g}")


def _cell(entry: dict[str, Any] | None, base: dict[str, Any] | None, digits: int) -> str:
    if entry is None:
        return "—"
    text = _fmt(entry["mean"], entry["half_interval"], digits)
    undefined = sum(math.isnan(v) for v in entry["values"])
    if undefined:  # the mean leaves undefined seeds out: say so, or the cell looks like every seed's
        text += f" [{len(entry['values']) - undefined} of {len(entry['values'])} seeds]"
    if base is None:
        return text
    theirs = dict(zip(base["seeds"], base["values"], strict=True))
    diffs = [v - theirs[s] for s, v in zip(entry["seeds"], entry["values"], strict=True) if s in theirs]
    mean, half = mean_interval(diffs)
    star = "*" if half is not None and abs(mean) > half else ""
    # a seed the other method lacks (or has undefined) has no pair: say so when the difference has fewer seeds
    pairs = sum(not math.isnan(d) for d in diffs)
    fewer = f" [{pairs} pair{'s' if pairs != 1 else ''}]" if pairs < len(entry["values"]) - undefined else ""
    return f"{text} ({_fmt(mean, half, digits, sign=True)}{star}{fewer})"


if __name__ == "__main__":
    sys.exit(main())
