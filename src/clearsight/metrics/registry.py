"""The metric registry, and the identity of a result row.

Entries declare `higher_is_better` and `needs_grad` (whether they differentiate).
"""

from collections.abc import Mapping
from typing import Any

from clearsight.errors import ConfigError
from clearsight.registry import Registry

METRICS: Registry = Registry("metric")

ROW_FIELDS = ("key", "metric", "value", "n", "higher_is_better", "dataset", "split", "suite", "warnings")
"""Fields every result row has; metric options are stored beside them and may not reuse these names."""


def row_key(name: str, opts: Mapping[str, Any]) -> str:
    """"metric/option=value/..." with the options sorted: the identity of a result row in results.jsonl."""
    clash = sorted(set(opts) & set(ROW_FIELDS))
    if clash:
        raise ConfigError(f"metric {name!r} has an option named {clash[0]!r}, which result rows reserve for "
                          f"themselves ({', '.join(ROW_FIELDS)}); rename the option")
    return name + "".join(f"/{k}={v}" for k, v in sorted(opts.items()))
