"""Standard training: cross-entropy on clean inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clearsight.objectives.base import OBJECTIVES, LossOutput
from clearsight.options import Fraction


@OBJECTIVES.register("standard", needs_double_backprop=False, paper=None, standard_at=(),
                     description="cross-entropy on clean inputs")
def standard(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, label_smoothing: Fraction = 0.0,
             **batch: object) -> LossOutput:
    """Mean cross-entropy CE(f(x), y) over the batch x [B, ...], y [B]."""
    logits = model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    return LossOutput(loss, {"ce": float(loss.detach())}, logits.detach())
