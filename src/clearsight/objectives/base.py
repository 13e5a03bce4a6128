"""What every training objective returns, and the registry of objectives.

Metadata every objective declares: `needs_double_backprop`, `paper` (arXiv id or None), `description`, and
`standard_at`, the option sets at which it is exactly `standard` training (a zero weight, eps 0), which a
contract test checks; adversarial objectives also declare `budgets`, the options filled from the dataset's
training budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from clearsight.registry import Registry

OBJECTIVES: Registry = Registry("objective")


@dataclass
class LossOutput:
    """The scalar loss to minimize, every loss term as a float for the log, and optionally the clean logits.

    `logits` ([B, C], the model's output on the clean batch) lets the engine report training accuracy without
    another forward pass; objectives that never compute clean logits leave it None.
    """

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
    logits: torch.Tensor | None = None


def cross_entropy_only(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **other_terms: float) -> LossOutput:
    """`standard`'s loss, with an objective's other log terms set to `other_terms`: what an objective returns at
    a zero weight (its `standard_at` points), without computing the terms that would be multiplied by 0."""
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    return LossOutput(ce, {"ce": float(ce.detach()), **other_terms}, logits.detach())
