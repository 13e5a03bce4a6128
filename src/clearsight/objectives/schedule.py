"""Radius schedules shared by every objective that perturbs its inputs: linear ramps over training.

The engine passes each objective `progress`, the fraction of training done at this step. A radius (an attack's
eps, a bound's eps and gamma) is 0 until `warmup`, grows linearly to its final value at `ramp`, then stays
there. Called outside `fit` (no `progress`), an objective uses its final radii.
"""

from __future__ import annotations

from clearsight.checks import check_radius
from clearsight.errors import ConfigError


def schedule_factor(progress: float | None, *, warmup: float, end: float) -> float:
    """Schedule factor in [0, 1]: 0 until `warmup`, linear up to 1 at `end`, then 1 (fractions of training).

    `progress` None (the objective called outside `fit`) means training is done: factor 1.
    """
    if progress is None:
        return 1.0
    if end <= warmup:
        return 1.0 if progress >= warmup else 0.0
    return min(1.0, max(0.0, (float(progress) - warmup) / (end - warmup)))


def check_schedule(warmup: float, end: float, **radii: float) -> None:
    """Refuse negative or non-finite radii and a schedule outside 0 <= warmup <= ramp <= 1."""
    for name, value in radii.items():
        check_radius(value, name)
    if not 0.0 <= warmup <= end <= 1.0:
        raise ConfigError(f"need 0 <= warmup <= ramp <= 1 (fractions of training), got warmup={warmup}, ramp={end}")


def ramped(value: float, progress: object, *, warmup: float, ramp: float) -> float:
    """`value` scaled by the schedule factor at `progress` (the engine's batch entry; None outside `fit`)."""
    return value * schedule_factor(progress, warmup=warmup, end=ramp)  # type: ignore[arg-type]
