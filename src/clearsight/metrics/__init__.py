"""Metrics: plain functions `metric(model, x, y, **options) -> per-sample tensor [B]`, registered with
`higher_is_better` so reports and tests read the direction instead of special-casing names.

Suites (`clearsight.metrics.suites`) name the rows `clearsight.evaluate` computes: "clean", "quick" (default)
and "full".
"""

from __future__ import annotations

from typing import Any

from clearsight.metrics.accuracy import accuracy, robust_accuracy
from clearsight.metrics.registry import METRICS
from clearsight.metrics.suites import SUITE_NAMES, Suite, suite


def get(name: str) -> Any:
    return METRICS.get(name)


__all__ = ["METRICS", "SUITE_NAMES", "Suite", "accuracy", "get", "robust_accuracy", "suite"]
