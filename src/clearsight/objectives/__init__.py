"""Training objectives: `build(name, **options)` -> callable(model, x, y, **batch) -> LossOutput.

An objective is a plain function `fn(model, x, y, *, option=default, ..., **batch)`; `build` checks the
options against its keyword-only parameters and returns `functools.partial(fn, **options)`, so the options
it was built with stay inspectable (`.func`, `.keywords`) and are recorded in the run's config. `batch` carries
per-sample extras from the dataset (e.g. `mask`) and the engine's `progress` (fraction of training done, for
ramps), `epoch` (0-based) and `epochs` (the run's total).

Budgets that depend on the data: an objective's metadata `budgets` names the options (its `eps`) whose default
None means "the dataset's training budget" (dataset metadata `train_eps`, per norm: MNIST linf 0.3, CIFAR-10
8/255, ...). `build(name, dataset=NAME)`, `clearsight.fit` and run configs fill them in, so the value used is
explicit in config.yaml.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from clearsight.errors import ConfigError
from clearsight.objectives import (  # noqa: F401  (registers)
    activation,
    certified,
    consistency,
    input_gradient,
    ir,
    jacobian,
    pgd_at,
    scaat,
    standard,
    trades,
)
from clearsight.objectives.base import OBJECTIVES, LossOutput

Objective = Callable[..., LossOutput]


def objective_options(name: str) -> dict[str, Any]:
    """Keyword options of objective `name` with their defaults."""
    return OBJECTIVES.options(name)


def build(name: str, /, *, dataset: str | None = None, **options: Any) -> functools.partial:
    """The objective `name` with `options` bound (unknown options are refused with the valid ones listed).

    `dataset` (a registered dataset name) fills the budgets left at None with that dataset's training budget.
    """
    OBJECTIVES.check_options(name, options)
    return OBJECTIVES.bind(name, **fill_budgets(name, options, dataset))


def fill_budgets(name: str, options: Mapping[str, Any], dataset: str | None) -> dict[str, Any]:
    """`options` with each of objective `name`'s budgets that is None (given or by default) set to the training
    budget of `dataset` for the objective's `norm`; unchanged when there is none to fill or no dataset."""
    defaults = objective_options(name)
    missing = [b for b in OBJECTIVES.meta(name).get("budgets", ()) if options.get(b, defaults[b]) is None]
    if not missing or dataset is None:
        return dict(options)
    from clearsight.data import DATASETS  # data is a lower layer; imported here to keep objectives light

    norm = options.get("norm", defaults.get("norm", "linf"))
    budgets = DATASETS.meta(dataset).get("train_eps", {}) if dataset in DATASETS else {}
    if norm not in budgets:
        what = (f"dataset {dataset!r} declares" if dataset in DATASETS else
                f"{dataset!r} is no registered dataset, so" if dataset else "the data have no dataset name, so")
        raise ConfigError(f"objective {name!r} needs {missing[0]}: {what} no {norm} training budget; give it "
                          f"explicitly ({missing[0]}=... in Python, --set objective.{missing[0]}=... on the CLI)")
    return {**options, **dict.fromkeys(missing, budgets[norm])}


def with_budgets(objective: Callable[..., Any], dataset: str | None) -> Callable[..., Any]:
    """A registered objective made by `build` with its unfilled budgets set from `dataset`; others unchanged."""
    name = registered_name(objective)
    if name is None:
        return objective
    keywords = objective.keywords if isinstance(objective, functools.partial) else {}
    filled = fill_budgets(name, keywords, dataset)
    return objective if filled == keywords else functools.partial(OBJECTIVES.get(name), **filled)


def registered_name(objective: Callable[..., Any]) -> str | None:
    """The registry name of an objective made by `build` (a partial of a registered function), else None."""
    func = objective.func if isinstance(objective, functools.partial) else objective
    return next((entry.name for entry in OBJECTIVES if entry.fn is func), None)


def describe(objective: Callable[..., Any]) -> dict[str, Any]:
    """{"name": ..., **options} of a registered objective or one made by `build` (for the run config);
    {"name": its __name__ or repr} otherwise."""
    name = registered_name(objective)
    if name is not None:
        keywords = objective.keywords if isinstance(objective, functools.partial) else {}
        return {"name": name, **objective_options(name), **keywords}
    return {"name": getattr(objective, "__name__", repr(objective))}


__all__ = ["OBJECTIVES", "LossOutput", "Objective", "build", "describe", "fill_budgets", "objective_options",
           "registered_name", "with_budgets"]
