"""Evaluation suites: which metric rows `clearsight.evaluate` computes, built from the dataset's attack budgets.

A suite is a list of (metric name, options) rows plus the options of the hygiene check (`attacks.check`), or
None to skip it. Budgets come from the dataset's registry metadata `eps_grid` ({"linf": (...), "l2": (...)}).

    clean  accuracy
    quick  accuracy; pgd-20 robust accuracy at the smallest and largest eps of linf (or of the dataset's first
           norm when it has no linf budgets); hygiene checks without the (expensive) more-steps-and-restarts
           comparison
    full   accuracy; pgd-40 at every eps of every norm; the worst case of pgd-40 (ce) and apgd-100 (dlr loss, or
           ce for fewer than 3 classes) at every eps, which `evaluate` computes from the pgd-40 row's samples
           (apgd runs only where pgd-40 failed); all hygiene checks
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clearsight.errors import ConfigError

SUITE_NAMES = ("clean", "quick", "full")
HYGIENE_SAMPLES = 256  # the hygiene check looks at the first samples only: it diagnoses the model, not the data


@dataclass(frozen=True)
class Suite:
    name: str
    rows: list[tuple[str, dict[str, Any]]]
    hygiene: dict[str, Any] | None = field(default=None)


def suite(name: str, *, eps_grid: dict[str, tuple[float, ...]] | None, num_classes: int) -> Suite:
    """The rows of suite `name` for a dataset with budgets `eps_grid` and `num_classes` classes."""
    if name not in SUITE_NAMES:
        raise ConfigError(f"unknown suite {name!r}; valid suites: {', '.join(SUITE_NAMES)}")
    rows: list[tuple[str, dict[str, Any]]] = [("accuracy", {})]
    if name == "clean":
        return Suite(name, rows)
    if not eps_grid:
        raise ConfigError(f"suite {name!r} attacks the model but the dataset declares no attack budgets; pass "
                          "eps_grid={'linf': (...), 'l2': (...)} to evaluate, or use suite='clean'")
    for norm, grid in eps_grid.items():
        if not grid or any(not float(e) >= 0 for e in grid):
            raise ConfigError(f"eps_grid[{norm!r}] must be a non-empty list of budgets >= 0, got {grid!r}")
    norm = "linf" if "linf" in eps_grid else sorted(eps_grid)[0]
    budgets = sorted(eps_grid[norm])
    if name == "quick":
        for eps in sorted({budgets[0], budgets[-1]}):
            rows.append(("robust_accuracy", {"attack": "pgd", "norm": norm, "eps": eps, "steps": 20}))
        return Suite(name, rows, {"eps": budgets[-1], "norm": norm, "max_gap": None})
    apgd_loss = "dlr" if num_classes >= 3 else "ce"
    for grid_norm, grid in sorted(eps_grid.items()):
        for eps in sorted(grid):
            rows.append(("robust_accuracy", {"attack": "pgd", "norm": grid_norm, "eps": eps, "steps": 40}))
            rows.append(("robust_accuracy", {"attack": f"pgd+apgd:loss={apgd_loss},steps=100", "norm": grid_norm,
                                             "eps": eps, "steps": 40}))
    return Suite(name, rows, {"eps": budgets[-1], "norm": norm})
