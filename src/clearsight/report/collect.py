"""A study directory's complete cells -> the summary (summary.json) and the long table (results.csv).

Reads files only: study.yaml, and per cell (cells/<method>-seed<s>/) cell.json, results.jsonl and log.jsonl.
Only cells whose cell.json says "complete": true count; every other expected cell is listed as missing with
the reason, and the summary is built from the rest. Of a cell's results.jsonl the report reads the rows
cell.json lists (evaluation.rows, when it lists them), the last row written of each key.

summary.json (non-finite numbers as the strings "nan", "inf", "-inf", as in results.jsonl):

    study      {name, description, dataset, model, seeds, suites} as study.yaml gives them
    standard   the method whose objective is "standard" (the first such), or null
    cells      {expected, complete: [cell names], missing: [{cell, method, seed, reason}]}
    rows       [{key, metric, options, higher_is_better, samples, group, title, detail, label, family,
                 family_label, eps, norm}]
               in suite order (`clearsight.report.columns.describe`)
    columns    the row keys of the summary table (`columns.table_columns`)
    methods    [{name, objective, description, seeds (complete ones), examples: {seed: path} (relative to DIR),
                 train: {seconds_per_epoch: {seeds, values, mean, half_interval}, relative, relative_half_interval},
                 results: {key: {seeds, values, n, mean, half_interval, curve: {name: mean curve}, warnings}},
                 hygiene: [{seed, key, text}]}]
               in the study's order; mean over seeds, half_interval the 95% Student-t half-width (null with one
               seed); train seconds are the mean over epochs of log.jsonl's "seconds", relative = the method's
               mean / the standard method's mean (its half-interval divided by the same)
"""

from __future__ import annotations

import csv
import io as text_io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clearsight import io, results
from clearsight.errors import ClearsightError, ConfigError
from clearsight.report.columns import describe, group_of, table_columns
from clearsight.report.stats import mean_interval
from clearsight.results import read_rows

STUDY_FILE, CELLS, CELL_FILE, EXAMPLES_FILE = "study.yaml", "cells", "cell.json", "examples.safetensors"
CSV_FIELDS = ("method", "objective", "seed", "key", "metric", "value", "n", "higher_is_better", "options")
STANDARD = "standard"


def cell_name(method: str, seed: int) -> str:
    return f"{method}-seed{seed}"


@dataclass
class Cell:
    method: str
    seed: int
    objective: str
    rows: list[dict[str, Any]]
    seconds: list[float]
    examples: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_study(study_dir: str | Path) -> dict[str, Any]:
    """The study config of `study_dir` (study.yaml), checked for what the report reads."""
    folder = Path(study_dir)
    path = folder / STUDY_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} is not a study directory: it has no {STUDY_FILE}. `clearsight study --out "
                          f"{folder}` makes one; `clearsight report` re-renders a study made that way")
    try:
        study = io.read_yaml(path, what="study config")
    except ClearsightError as err:
        raise ConfigError(f"{folder} is not a usable study directory: {err}") from err
    methods, seeds = study.get("methods"), study.get("seeds")
    if not isinstance(methods, list) or not all(isinstance(m, dict) and isinstance(m.get("name"), str)
                                                for m in methods):
        raise ConfigError(f"{path} has no list 'methods' of mappings with a 'name'; it was not written by "
                          "`clearsight study`")
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{path} has no list 'seeds' of integers; it was not written by `clearsight study`")
    return study


def read_cell(folder: Path, method: str, seed: int) -> Cell | str:
    """The complete cell in `folder`, or the reason it does not count."""
    if not folder.is_dir():
        return "not started"
    try:
        info = json.loads((folder / CELL_FILE).read_text())
    except FileNotFoundError:
        return f"no {CELL_FILE} yet (training or evaluating)"
    except (OSError, ValueError) as err:
        return f"{CELL_FILE} unreadable: {err}"
    if not isinstance(info, dict) or info.get("complete") is not True:
        return "incomplete (still running, or it failed)"
    if info.get("method") != method or info.get("seed") != seed:
        return f"{CELL_FILE} names method {info.get('method')!r}, seed {info.get('seed')!r}"
    evaluation = info.get("evaluation")
    settings = evaluation.get("settings") if isinstance(evaluation, dict) else None
    made = settings.get("conventions") if isinstance(settings, dict) else None
    if made != results.CONVENTIONS:
        # rows an older clearsight computed differently must not sit beside current ones in one table
        return (f"evaluated by a clearsight whose rows are computed differently (conventions {made}, now "
                f"{results.CONVENTIONS}): run the study again to recompute its rows (no retraining)")
    try:
        rows = _latest(read_rows(folder / "results.jsonl"), _wanted(info))
        log = io.read_jsonl(folder / "log.jsonl", what="training log")
    except ClearsightError as err:
        return str(err)
    if not rows:
        return "complete but results.jsonl holds none of the study's rows"
    seconds = [float(e["seconds"]) for e in log if isinstance(e.get("seconds"), (int, float))]
    examples = folder / EXAMPLES_FILE
    return Cell(method, seed, str(info.get("objective", "")), rows, seconds,
                examples if examples.is_file() else None, info)


@dataclass
class Gathered:
    """What a study directory holds now: its config, the complete cells per method, the missing cells."""

    folder: Path
    study: dict[str, Any]
    cells: dict[str, list[Cell]]
    missing: list[dict[str, Any]]


def gather(study_dir: str | Path) -> Gathered:
    """Read `study_dir` once: every expected cell is either complete (read) or missing (with the reason)."""
    folder = Path(study_dir)
    study = read_study(folder)
    cells: dict[str, list[Cell]] = {m["name"]: [] for m in study["methods"]}
    missing = []
    for method in study["methods"]:
        for seed in study["seeds"]:
            name = cell_name(method["name"], seed)
            cell = read_cell(folder / CELLS / name, method["name"], seed)
            if isinstance(cell, str):
                missing.append({"cell": name, "method": method["name"], "seed": seed, "reason": cell})
            else:
                cells[method["name"]].append(cell)
    return Gathered(folder, study, cells, missing)


def _wanted(info: Mapping[str, Any]) -> list[str] | None:
    # the runner records the row keys the study asks for; results.jsonl may hold more (an earlier suite, a
    # `clearsight certify` run on the cell), which are not the study's
    wanted = (info.get("evaluation") or {}).get("rows")
    return [str(k) for k in wanted] if isinstance(wanted, list) else None


def _latest(rows: Sequence[dict[str, Any]], wanted: Sequence[str] | None) -> list[dict[str, Any]]:
    """One row per key, the last written (a recomputed stale row is appended after the old one), in the order
    keys first appear; only the `wanted` keys when the cell names them."""
    last: dict[str, dict[str, Any]] = {}
    for row in rows:
        last[row["key"]] = row  # a dict keeps a key where it was first inserted
    keep = set(wanted) if wanted is not None else set(last)
    return [r for k, r in last.items() if k in keep]


def collect(study_dir: str | Path, *, write: bool = True) -> dict[str, Any]:
    """The summary of `study_dir` (schema in the module docstring) from its complete cells; with `write`,
    DIR/results.csv and DIR/summary.json are written too (atomically), from the same reading of the cells.

    Raises:
        ConfigError: `study_dir` is not a study directory.
    """
    gathered = gather(study_dir)
    summary = summarize(gathered)
    if write:
        io.write_text(gathered.folder / "results.csv", csv_text(gathered))
        io.write_text(gathered.folder / "summary.json", json.dumps(_finite(summary), indent=1, allow_nan=False) + "\n")
    return summary


def summarize(gathered: Gathered) -> dict[str, Any]:
    """The summary of what `gather` read."""
    study, cells = gathered.study, gathered.cells
    first: dict[str, dict[str, Any]] = {}
    for cell in (c for m in study["methods"] for c in cells[m["name"]]):
        for row in cell.rows:
            first.setdefault(row["key"], row)
    rows = describe(list(first.values()))
    methods = [_method(m, cells[m["name"]], gathered.folder) for m in study["methods"]]
    standard = next((m["name"] for m in methods if m["objective"] == STANDARD), None)
    _relative_cost(methods, standard)
    means = {d["key"]: [m["results"].get(d["key"], {}).get("mean", math.nan) for m in methods] for d in rows}
    evaluate = study["evaluate"] if isinstance(study.get("evaluate"), Mapping) else {}
    return {"study": {**{k: study.get(k) for k in ("name", "description", "dataset", "model", "seeds")},
                      "suites": study.get("suites", evaluate.get("suites"))},
            "standard": standard,
            "cells": {"expected": len(study["methods"]) * len(study["seeds"]),
                      "complete": [cell_name(c.method, c.seed) for m in methods for c in cells[m["name"]]],
                      "missing": gathered.missing},
            "rows": rows, "columns": table_columns(rows, means), "methods": methods}


def _method(config: Mapping[str, Any], cells: Sequence[Cell], folder: Path) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    hygiene = []
    for cell in cells:
        for row in cell.rows:  # the warnings that change how a robustness number reads: hygiene and robust rows'
            entry = results.setdefault(row["key"], {"seeds": [], "values": [], "n": [], "curves": [],
                                                    "warnings": []})
            entry["seeds"].append(cell.seed)
            entry["values"].append(float(row["value"]))
            entry["n"].append(row.get("n"))
            if row.get("curve"):
                entry["curves"].append(row["curve"])
            for text in row.get("warnings", ()):
                entry["warnings"].append(f"seed {cell.seed}: {text}")
                if group_of(row["metric"], row["key"]) in ("hygiene", "robust"):
                    hygiene.append({"seed": cell.seed, "key": row["key"], "text": text})
    for entry in results.values():
        entry["mean"], entry["half_interval"] = mean_interval(entry["values"])
        entry["curve"] = _mean_curves(entry.pop("curves"))
    per_seed = [(c.seed, math.fsum(c.seconds) / len(c.seconds)) for c in cells if c.seconds]
    mean, half = mean_interval([s for _, s in per_seed]) if per_seed else (None, None)
    return {"name": config["name"], "objective": config.get("objective", cells[0].objective if cells else ""),
            "description": config.get("description") or "", "seeds": [c.seed for c in cells],
            "examples": {str(c.seed): str(c.examples.relative_to(folder)) for c in cells if c.examples},
            "train": {"seconds_per_epoch": {"seeds": [s for s, _ in per_seed], "values": [v for _, v in per_seed],
                                            "mean": mean, "half_interval": half},
                      "relative": None, "relative_half_interval": None},
            "results": results, "hygiene": hygiene}


def _mean_curves(curves: Sequence[Mapping[str, Sequence[float]]]) -> dict[str, list[float]]:
    out = {}
    for name in curves[0] if curves else ():
        series = [c[name] for c in curves if name in c and len(c[name]) == len(curves[0][name])]
        out[name] = [math.fsum(point) / len(series) for point in zip(*series, strict=True)]
    return out


def _relative_cost(methods: Sequence[dict[str, Any]], standard: str | None) -> None:
    base = next((m["train"]["seconds_per_epoch"]["mean"] for m in methods if m["name"] == standard), None)
    if not base:  # no standard method, or it has no complete cell: absolute seconds only
        return
    for m in methods:
        cost = m["train"]["seconds_per_epoch"]
        if cost["mean"] is not None:
            m["train"]["relative"] = cost["mean"] / base
            half = cost["half_interval"]
            m["train"]["relative_half_interval"] = None if half is None else half / base


def csv_text(gathered: Gathered) -> str:
    """results.csv: one line per method, seed and row key (CSV_FIELDS; options as JSON)."""
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for method in gathered.study["methods"]:
        for cell in gathered.cells[method["name"]]:
            objective = method.get("objective", cell.objective)
            for row in cell.rows:
                writer.writerow([cell.method, objective, cell.seed, row["key"], row["metric"],
                                 repr(float(row["value"])), row.get("n"), row.get("higher_is_better"),
                                 json.dumps(row.get("options", {}), sort_keys=True)])
    return buffer.getvalue()


def _finite(value: Any) -> Any:
    # as clearsight.io writes results.jsonl: standard JSON, non-finite floats as strings
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
