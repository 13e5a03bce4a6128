"""Metrics: plain functions `metric(model, x, y, **options) -> per-sample tensor [B]`, registered with
`higher_is_better` so reports and tests read the direction instead of special-casing names.

Certified metrics (`certified_accuracy`, `delta_bound`, `certified_delta`, `certified_topk`) come from the
interval bounds; `clearsight.bounds.certify` computes them as dataset rows.

Suites (`clearsight.metrics.suites`) name the rows `clearsight.evaluate` computes: "clean", "quick" (default)
and "full".
"""

from __future__ import annotations

from typing import Any

from clearsight.metrics.accuracy import accuracy, robust_accuracy
from clearsight.metrics.certified import certified_accuracy, certified_delta, certified_topk, delta_bound
from clearsight.metrics.registry import METRICS
from clearsight.metrics.suites import SUITE_NAMES, Suite, suite


def get(name: str) -> Any:
    return METRICS.get(name)


__all__ = ["METRICS", "SUITE_NAMES", "Suite", "accuracy", "certified_accuracy", "certified_delta", "certified_topk",
           "delta_bound", "get", "robust_accuracy", "suite"]
