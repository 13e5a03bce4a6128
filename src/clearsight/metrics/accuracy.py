"""Accuracy metrics: clean accuracy and robust accuracy under attacks."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from clearsight.metrics.registry import METRICS


@METRICS.register("accuracy", higher_is_better=True, needs_grad=False,
                  description="clean accuracy: 1 where the top logit is the label")
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1.0 where argmax f(x) = y, else 0.0; shape [B]. Evaluated as given (callers set eval mode)."""
    with torch.inference_mode():
        return (model(x).argmax(1) == y).float()


@METRICS.register("robust_accuracy", higher_is_better=True, needs_grad=True,
                  description="1 where the input is classified correctly and no attack changes that")
def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
                    attack: str = "pgd", steps: int = 40, loss: str = "ce", restarts: int = 1) -> torch.Tensor:
    """Per-sample robustness [B] under `attack` at `eps` (METHODS.md: the AutoAttack worst-case convention).

    Args:
        attack: a registered prediction attack ("pgd", "apgd", "fgsm"), or several joined by "+"
            ("pgd+apgd"): a sample counts as robust only if every one of them fails.
        steps, loss, restarts: passed to each attack (fgsm takes none of them but `loss`).
    """
    from clearsight import attacks  # attacks import metrics-free modules only; keep the import local anyway

    fns = []
    for name in attack.split("+"):
        opts = {"eps": eps, "norm": norm, "loss": loss}
        if name != "fgsm":
            opts |= {"steps": steps, "restarts": restarts}
        attacks.ATTACKS.check_options(name, opts)
        fns.append(partial(attacks.get(name), **opts))
    return attacks.robust_accuracy(model, x, y, fns)
