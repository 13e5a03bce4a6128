"""The attack inside an adversarial training step, shared by every objective that trains on attacked inputs.

The attack is `clearsight.attacks.pgd`, the one loop: it runs the model in eval mode with frozen parameters, so
batch-norm statistics and dropout are untouched and no weight gradients are computed, then restores both; the
training loss afterwards runs in the mode the engine set. It returns the last iterate (Madry et al. and Zhang et
al. train on it; scoring iterates would cost two more forward passes per step) as a tensor without a graph, so
nothing of the attack reaches the parameters.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from clearsight.attacks.ball import NORMS
from clearsight.attacks.pgd import fgsm, pgd
from clearsight.checks import check_radius
from clearsight.errors import ConfigError

# the attacks an objective can make inside its step: pgd, fgsm (one step of size eps from x) and the iterative
# least-likely-class attack (pgd towards the class of lowest clean logit)
AttackInStep = Literal["pgd", "fgsm", "least-likely"]
ATTACKS_IN_STEP: tuple[str, ...] = get_args(AttackInStep)


def budget(eps: float | None, objective: str) -> float:
    """The final eps of `objective`, checked finite and >= 0; None means the dataset's training budget was never
    filled in."""
    if eps is None:
        raise ConfigError(f"objective {objective!r} needs eps: give it (e.g. eps=0.3), or build the objective "
                          "with dataset=NAME (clearsight.objectives.build, clearsight.fit and run configs do) to "
                          "use that dataset's training budget")
    return float(check_radius(eps, "eps"))


def attack_options(objective: str, eps: float | None, *, norm: str, steps: int, step_size: float | None,
                   attack: str = "pgd") -> float:
    """Check the in-step attack's options at every call, before any ramp (an option that is wrong would otherwise
    pass while eps is still 0 and fail later in training); returns the final eps."""
    final = budget(eps, objective)
    if norm not in NORMS:
        raise ConfigError(f"objective {objective!r}: unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"objective {objective!r}: steps must be an integer >= 1, got {steps!r}")
    if step_size is not None:
        check_radius(step_size, "step_size")
    if attack not in ATTACKS_IN_STEP:
        raise ConfigError(f"objective {objective!r}: attack must be one of {', '.join(ATTACKS_IN_STEP)}, got "
                          f"{attack!r}")
    return final


def adversarial_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, steps: int,
                         step_size: float | None, loss: str = "ce", start_sigma: float | None = None,
                         perturb_mask: torch.Tensor | None = None, attack: str = "pgd") -> torch.Tensor:
    """x_adv [B, ...] for a training step: the last iterate of `attack` (see ATTACKS_IN_STEP), detached; x itself
    when eps is 0 (no attack).

    `step_size` None is pgd's 2.5 * eps / steps, which follows eps along a ramp; `perturb_mask` (like x)
    confines the attack to the features where it is nonzero.
    """
    if eps == 0.0:
        return x.detach()
    if attack == "fgsm":
        if perturb_mask is not None or start_sigma is not None:
            raise ConfigError("the in-step fgsm attack takes no perturbation mask or start noise")
        return fgsm(model, x, y, eps=eps, norm=norm, loss=loss)
    if attack not in ATTACKS_IN_STEP:
        raise ConfigError(f"unknown attack {attack!r} inside a training step; valid: {', '.join(ATTACKS_IN_STEP)}")
    targeted = {"targeted": True, "target": "least-likely"} if attack == "least-likely" else {}
    return pgd(model, x, y, eps=eps, norm=norm, steps=steps, step_size=step_size, loss=loss, keep="last",
               start_sigma=start_sigma, perturb_mask=perturb_mask, **targeted)
