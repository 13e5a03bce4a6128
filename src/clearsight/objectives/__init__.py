"""Training objectives: `build(name, **options)` -> callable(model, x, y, **batch) -> LossOutput.

An objective is a plain function `fn(model, x, y, *, option=default, ..., **batch)`; `build` checks the
options against its keyword-only parameters and returns `functools.partial(fn, **options)`, so the options
it was built with stay inspectable (`.func`, `.keywords`) and are recorded in the run's config. `batch` carries
per-sample extras from the dataset (e.g. `mask`) and the engine's `progress` (fraction of training done, for
ramps) and `epoch`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from clearsight.objectives import certified, standard  # noqa: F401  (registers)
from clearsight.objectives.base import OBJECTIVES, LossOutput

Objective = Callable[..., LossOutput]


def objective_options(name: str) -> dict[str, Any]:
    """Keyword options of objective `name` with their defaults."""
    return OBJECTIVES.options(name)


def build(name: str, /, **options: Any) -> functools.partial:
    """The objective `name` with `options` bound (unknown options are refused with the valid ones listed)."""
    return OBJECTIVES.bind(name, **options)


def describe(objective: Callable[..., Any]) -> dict[str, Any]:
    """{"name": ..., **options} of an objective made by `build` (for the run config); {"name": repr} otherwise."""
    if isinstance(objective, functools.partial):
        for entry in OBJECTIVES:
            if entry.fn is objective.func:
                return {"name": entry.name, **{**objective_options(entry.name), **objective.keywords}}
    return {"name": getattr(objective, "__name__", repr(objective))}


__all__ = ["OBJECTIVES", "LossOutput", "Objective", "build", "describe", "objective_options"]
