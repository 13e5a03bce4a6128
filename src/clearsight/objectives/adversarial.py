"""The attack inside an adversarial training step, shared by every objective that trains on attacked inputs.

The attack is `clearsight.attacks.pgd`, the one loop: it runs the model in eval mode with frozen parameters, so
batch-norm statistics and dropout are untouched and no weight gradients are computed, then restores both; the
training loss afterwards runs in the mode the engine set. It returns the last iterate (Madry et al. and Zhang et
al. train on it; scoring iterates would cost two more forward passes per step) as a tensor without a graph, so
nothing of the attack reaches the parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from clearsight.attacks.pgd import pgd
from clearsight.errors import ConfigError


def budget(eps: float | None, objective: str) -> float:
    """The final eps of `objective`; None means the dataset's training budget was never filled in."""
    if eps is None:
        raise ConfigError(f"objective {objective!r} needs eps: give it (e.g. eps=0.3), or build the objective "
                          "with dataset=NAME (clearsight.objectives.build, clearsight.fit and run configs do) to "
                          "use that dataset's training budget")
    return float(eps)


def adversarial_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, steps: int,
                         step_size: float | None, loss: str = "ce", start_sigma: float | None = None,
                         perturb_mask: torch.Tensor | None = None) -> torch.Tensor:
    """x_adv [B, ...] for a training step: the last PGD iterate, detached; x itself when eps is 0 (no attack).

    `step_size` None is pgd's 2.5 * eps / steps, which follows eps along a ramp; `perturb_mask` (like x)
    confines the attack to the features where it is nonzero.
    """
    if eps == 0.0:
        return x.detach()
    return pgd(model, x, y, eps=eps, norm=norm, steps=steps, step_size=step_size, loss=loss, keep="last",
               start_sigma=start_sigma, perturb_mask=perturb_mask)
