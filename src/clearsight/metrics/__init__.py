"""Metrics: plain functions `metric(model, x, y, **options) -> per-sample tensor [B]`, registered with
`higher_is_better` so reports and tests read the direction instead of special-casing names.

Suites name the metrics `clearsight.evaluate` computes: "clean" (accuracy only) and "quick" (the default; grows
as attributions, attacks and bounds land), "full".
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clearsight.registry import Registry

METRICS: Registry = Registry("metric")


def get(name: str) -> Any:
    return METRICS.get(name)


@METRICS.register("accuracy", higher_is_better=True, needs_grad=False,
                  description="clean accuracy: 1 where the top logit is the label")
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1.0 where argmax f(x) = y, else 0.0; shape [B]. Evaluated as given (callers set eval mode)."""
    with torch.inference_mode():
        return (model(x).argmax(1) == y).float()


# suite -> list of (metric name, options); every option set becomes one row of results.jsonl
SUITES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "clean": [("accuracy", {})],
    "quick": [("accuracy", {})],
    "full": [("accuracy", {})],
}

__all__ = ["METRICS", "SUITES", "accuracy", "get"]
