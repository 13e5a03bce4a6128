"""What a result row is: its fields, its key, and how one is built from per-sample values. Nothing else builds rows.

A row (one JSON object per line of results.jsonl):

    key               identity: "metric/option=value/..." with the options sorted (`row_key`); never parsed
    metric            the registered metric
    options           the metric's options as plain data: an attribution as [name, options], an attack list as
                      [[name, options], ...] (see `clearsight.specs`)
    value             mean of the per-sample values that are defined (NaN marks an undefined sample, e.g. an
                      empty localisation mask); +-inf values are real bounds and are kept
    n                 number of samples with a defined value
    higher_is_better  the metric's direction (registry metadata)
    dataset, split, suite
    seed, batch_size  the evaluation's seed (attack starts, noise) and batch size (provenance: values do not depend
                      on it); absent from rows written before 0.2
    samples           the row's sample limit (only when the suite set one: the first `samples` samples)
    curve             {name: mean curve} for metrics that have curves (deletion, insertion, pixel flipping)
    warnings          texts for the reader (hygiene findings, undefined samples)

Rows written before the options moved under "options" (clearsight <= 0.1.0 development rows, with the options
beside the fields and attack lists as strings such as "pgd+apgd:loss=dlr,steps=100") are read by `upgrade`,
which keeps their keys: keys are rendered exactly as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from clearsight import io
from clearsight.specs import plain, spec, value_text

ROW_FIELDS = ("key", "metric", "options", "value", "n", "higher_is_better", "dataset", "split", "suite", "seed",
              "batch_size", "samples", "curve", "warnings")

# The version of how rows are computed: raised whenever a row's values change for the same key and settings, so
# that stored rows (a study's cells) written by an older version are recomputed, and not shown, rather than mixed
# with new ones. 2: a worst-case row extends its one-shorter prefix row (before, it reused whichever prefix the
# suite held).
CONVENTIONS = 2


def row_key(metric: str, options: Mapping[str, Any], *, samples: int | None = None) -> str:
    """"metric/option=value/..." with the options sorted, plus "/samples=N" for a row on the first N samples."""
    parts = [f"/{k}={value_text(v)}" for k, v in sorted(options.items())]
    return metric + "".join(parts) + (f"/samples={samples}" if samples is not None else "")


def make_row(metric: str, options: Mapping[str, Any], values: torch.Tensor, *, higher_is_better: bool,
             where: Mapping[str, Any], samples: int | None = None,
             curves: Mapping[str, torch.Tensor] | None = None, warnings: Sequence[str] = ()) -> dict[str, Any]:
    """The row of `metric` at `options` from its per-sample values [N] (and per-sample curves {name: [N, T]})."""
    values = values.detach().double().flatten()
    defined = ~torch.isnan(values)
    n = int(defined.sum())
    notes = list(warnings)
    if n < values.numel():
        notes.append(f"{values.numel() - n} of {values.numel()} samples have no value (for example an empty "
                     "mask or a zero attribution); the mean is over the others")
    row: dict[str, Any] = {
        "key": row_key(metric, options, samples=samples), "metric": metric, "options": plain(dict(options)),
        "value": float(values[defined].mean()) if n else float("nan"), "n": n,
        "higher_is_better": bool(higher_is_better), **where}
    if samples is not None:
        row["samples"] = int(samples)
    if curves:
        row["curve"] = {name: [float(v) for v in c.detach().double()[defined].mean(0)] for name, c in curves.items()}
    if notes:
        row["warnings"] = notes
    return row


def hygiene_row(options: Mapping[str, Any], n: int, warnings: Sequence[str], *, where: Mapping[str, Any]
                ) -> dict[str, Any]:
    """The row of the gradient-masking checks on n samples: its value is the number of warnings, which it always
    lists (an empty list: none)."""
    row = make_row("hygiene", options, torch.full((n,), float(len(warnings))), higher_is_better=False, where=where)
    return {**row, "warnings": list(warnings)}


def upgrade(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row in the current form: a row written before options moved under "options" gets them moved there,
    and its attack-list strings ("pgd+apgd:loss=dlr,steps=100") become [[name, options], ...]. Keys are kept."""
    row = {**row, "value": _number(row.get("value"))}  # io writes non-finite floats as "nan", "inf", "-inf"
    if "options" in row:
        return row
    options = {k: v for k, v in row.items() if k not in ROW_FIELDS}
    if isinstance(options.get("attack"), str):
        options["attack"] = plain(_legacy_attacks(options["attack"]))
    return {**{k: v for k, v in row.items() if k in ROW_FIELDS}, "options": options}


def _number(value: Any) -> Any:
    return float(value) if value in ("nan", "inf", "-inf") else value


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a results.jsonl file, each in the current form (`upgrade`)."""
    return [upgrade(r) for r in io.read_jsonl(Path(path), what="results file",
                                              fix="Move it away and evaluate the run again")]


def _legacy_attacks(text: str) -> list[tuple[str, dict[str, Any]]]:
    # the old string form, read only from files written before attack lists became data
    out = []
    for part in text.split("+"):
        name, _, options = part.strip().partition(":")
        own = {}
        for item in filter(None, (o.strip() for o in options.split(","))):
            key, _, raw = item.partition("=")
            own[key.strip()] = _legacy_value(raw.strip())
        out.append(spec((name, own)))
    return out


def _legacy_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)
