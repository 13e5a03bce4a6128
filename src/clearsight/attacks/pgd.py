"""fgsm and pgd: fixed-size steepest-ascent steps in the shared loop (`clearsight.attacks.loop`)."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from clearsight.attacks.ball import Ball
from clearsight.attacks.loop import Stepper, run_attack
from clearsight.attacks.registry import ATTACKS
from clearsight.checks import check_radius
from clearsight.errors import ConfigError


def fixed_step(ball: Ball, step_size: float) -> Stepper:
    """x_{t+1} = P(x_t + step_size * direction(grad)): sign steps for linf, normalized-gradient steps for l2."""

    def step(t: int, x: torch.Tensor, grad: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return ball.project(x + step_size * ball.direction(grad))

    return step


@ATTACKS.register("fgsm", norms=("linf", "l2"), goal="prediction", paper="arXiv:1412.6572",
                  description="fast gradient (sign) method: one step of size eps from x")
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 0.1, norm: str = "linf",
         loss: str = "ce", targeted: bool = False, target: torch.Tensor | str | None = None) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al., arXiv 1412.6572) and its l2 form.

    linf: clip(x + eps * sign(g), 0, 1); l2: clip(x + eps * g / ||g||_2, 0, 1), with g the gradient of the loss
    (descended instead for a targeted attack). One step of the pgd loop without random start.

    Args:
        x: inputs [B, ...] in [0, 1]; y: labels int64 [B].
        loss: "ce", "margin" or "dlr" (see `clearsight.attacks.losses`).
        target: target classes [B] or "least-likely" when `targeted`.

    Returns:
        x_adv like x, within the eps ball around x and inside [0, 1].
    """
    return run_attack(model, x, y, eps=eps, norm=norm, steps=1, stepper=partial(fixed_step, step_size=float(eps)),
                      random_start=False, loss=loss, targeted=targeted, target=target, keep="last")


@ATTACKS.register("pgd", norms=("linf", "l2"), goal="prediction", paper="arXiv:1706.06083",
                  description="projected gradient descent with random start and restarts (Madry et al.)")
def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 0.3, norm: str = "linf", steps: int = 40,
        step_size: float | None = None, restarts: int = 1, random_start: bool = True, loss: str = "ce",
        targeted: bool = False, target: torch.Tensor | str | None = None,
        generator: torch.Generator | None = None, keep: str = "worst", start_sigma: float | None = None,
        perturb_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Projected gradient descent (Madry et al., arXiv 1706.06083).

    Each step moves `step_size` along sign(g) (linf) or g / ||g||_2 (l2) and projects onto the eps ball ∩
    [0, 1]. The random start is uniform in the ball. Per sample the worst case over all iterates and restarts
    is returned: a misclassified iterate (for a targeted attack: one classified as the target) first, else the
    one of highest loss. Cost: `steps` forward+backward passes per restart plus one forward pass.

    Args:
        x: inputs [B, ...] in [0, 1]; y: labels int64 [B].
        step_size: None -> 2.5 * eps / steps (so the steps can cross the ball, Madry et al.).
        restarts: independent runs from new random starts; runs after the first only attack the samples not
            yet broken (without random_start all runs would be identical, so only one is made).
        loss: "ce", "margin" (CW, max_{j!=y} z_j - z_y), "dlr", or "kl" (the KL divergence from the model's clean
            prediction on x, TRADES's inner maximization; see `clearsight.attacks.losses`).
        targeted: minimize the loss towards `target` instead of maximizing it at y.
        target: target classes [B] (int64) or "least-likely" (lowest clean logit).
        generator: seeds the random starts (must live on x's device); None uses the global RNG.
        keep: "worst" (the default, for evaluation) or "last": the last iterate, unscored, as adversarial
            training uses it (Madry et al.; saves two forward passes; restarts must be 1).
        start_sigma: start from x + start_sigma * N(0, I) instead of a uniform point of the ball (TRADES: 0.001).
        perturb_mask: like x; only features where it is nonzero are perturbed (the rest stay exactly x): the
            eps ball of the free features (SCAAT's attack outside the saliency mask).

    Returns:
        x_adv like x, with ||x_adv - x|| <= eps and 0 <= x_adv <= 1.
    """
    if step_size is None:
        step_size = 2.5 * float(check_radius(eps, "eps")) / max(int(steps), 1)
    if not float(step_size) >= 0:
        raise ConfigError(f"step_size must be >= 0, got {step_size}")
    return run_attack(model, x, y, eps=eps, norm=norm, steps=steps,
                      stepper=partial(fixed_step, step_size=float(step_size)), restarts=restarts,
                      random_start=random_start, loss=loss, targeted=targeted, target=target, generator=generator,
                      keep=keep, start_sigma=start_sigma, perturb_mask=perturb_mask)
