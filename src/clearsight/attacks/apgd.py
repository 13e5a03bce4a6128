"""apgd: Auto-PGD (Croce & Hein, arXiv 2003.01690), a step-size-free PGD, as a stepper of the shared loop.

The algorithm (paper, Algorithm 1), with f the loss maximized and P the projection onto the feasible set:

    eta = 2 eps;  x1 = P(x0 + eta * dir(grad f(x0)))
    z_{k+1} = P(x_k + eta * dir(grad f(x_k)))
    x_{k+1} = P(x_k + alpha (z_{k+1} - x_k) + (1 - alpha)(x_k - x_{k-1}))      momentum alpha = 0.75
    at each checkpoint w_j, halve eta and restart from the best point x_max when
      (1) the loss increased in fewer than rho * (w_j - w_{j-1}) of the steps since w_{j-1} (rho = 0.75), or
      (2) eta was not halved at w_{j-1} and the best loss f_max has not improved since w_{j-1}.
    checkpoints w_j = ceil(p_j N): p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).

All state is per sample. After a restart from x_max the momentum term is x_max - x_{k-1}, as the paper's
update reads (and the authors' code does). dir() is sign for linf and the normalized gradient for l2 (the
authors' l2 version). Deviations, documented: the random start is uniform in the ball (the authors draw it on
the ball's surface), condition (1) uses the paper's strict "<" (the code uses "<="), condition (2) may already
fire at the first checkpoint (the paper's reading; the code treats the start as "just halved"), after a restart
from x_max the next "loss increased" test compares with f_max (the loss of the point restarted from; the code
compares with the iterate before the restart), and the returned point is the worst case of the shared loop
(misclassified first, else highest loss), which matches the code's choice of x_best_adv for the samples it
breaks.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from clearsight.attacks.ball import Ball
from clearsight.attacks.loop import run_attack
from clearsight.attacks.registry import ATTACKS
from clearsight.errors import ConfigError


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j (0 < w_j < steps) at which apgd may halve its step size."""
    # p_j in hundredths, so ceil(p_j * N) is exact (0.41 * 100 is 41.000000000000004 in floats)
    p_prev, p = 0, 22
    out: list[int] = []
    while p <= 100:
        w = -(-p * steps // 100)
        if 0 < w < steps and (not out or w > out[-1]):
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - 3, 6)
    return out


class ApgdStepper:
    """Per-sample state of one apgd run over a batch (set from the first iterate at t = 0)."""

    x_max: torch.Tensor  # best point so far, its gradient and loss
    g_max: torch.Tensor
    f_max: torch.Tensor
    f_max_at_check: torch.Tensor  # f_max at the previous checkpoint
    halved_at_check: torch.Tensor  # whether eta was halved at the previous checkpoint
    increases: torch.Tensor  # steps since the previous checkpoint that increased the loss
    f_prev: torch.Tensor  # loss of the previous iterate
    x_prev: torch.Tensor  # the previous iterate (momentum)

    def __init__(self, ball: Ball, *, steps: int, rho: float, alpha: float) -> None:
        self.ball, self.rho, self.alpha = ball, rho, alpha
        self.checks = set(checkpoints(steps))
        self.last_check = 0
        shape = (-1,) + (1,) * (ball.center.dim() - 1)
        self.eta = torch.full((ball.center.shape[0],), 2.0 * ball.eps, device=ball.center.device,
                              dtype=ball.center.dtype).view(shape)

    def __call__(self, t: int, x: torch.Tensor, grad: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        view = self.eta.shape
        if t == 0:
            self.x_max, self.g_max, self.f_max = x, grad, value
            self.f_max_at_check = value
            self.halved_at_check = torch.zeros_like(value, dtype=torch.bool)
            self.increases = torch.zeros_like(value)
            self.x_prev = x
        else:
            self.increases += (value > self.f_prev).to(value.dtype)
            better = value > self.f_max
            self.x_max = torch.where(better.view(view), x, self.x_max)
            self.g_max = torch.where(better.view(view), grad, self.g_max)
            self.f_max = torch.where(better, value, self.f_max)
        if t in self.checks:
            cond1 = self.increases < self.rho * (t - self.last_check)
            cond2 = ~self.halved_at_check & (self.f_max <= self.f_max_at_check)
            halve = cond1 | cond2
            self.eta = torch.where(halve.view(view), self.eta / 2, self.eta)
            x = torch.where(halve.view(view), self.x_max, x)
            grad = torch.where(halve.view(view), self.g_max, grad)
            value = torch.where(halve, self.f_max, value)
            self.halved_at_check, self.f_max_at_check = halve, self.f_max
            self.increases = torch.zeros_like(self.increases)
            self.last_check = t
        self.f_prev = value
        z = self.ball.project(x + self.eta * self.ball.direction(grad))
        a = 1.0 if t == 0 else self.alpha
        x_next = self.ball.project(x + a * (z - x) + (1.0 - a) * (x - self.x_prev))
        self.x_prev = x
        return x_next


@ATTACKS.register("apgd", norms=("linf", "l2"), goal="prediction", paper="arXiv:2003.01690",
                  description="Auto-PGD: step-size halving at checkpoints, momentum; ce or dlr loss (Croce & Hein)")
def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 0.3, norm: str = "linf",
         steps: int = 100, loss: str = "ce", restarts: int = 1, random_start: bool = True, rho: float = 0.75,
         momentum: float = 0.75, generator: torch.Generator | None = None) -> torch.Tensor:
    """Auto-PGD (Croce & Hein, arXiv 2003.01690); see the module docstring for the algorithm.

    Args:
        x: inputs [B, ...] in [0, 1]; y: labels int64 [B].
        loss: "ce" or "dlr" (needs >= 3 classes; a clear error otherwise, use "margin" for binary models).
        restarts: independent runs; runs after the first only attack the samples not yet broken.
        rho: the fraction of loss increases below which the step size is halved (condition 1).
        momentum: alpha, the weight of the new step against the previous one.
        generator: seeds the random starts (must live on x's device).

    Returns:
        x_adv like x, with ||x_adv - x|| <= eps and 0 <= x_adv <= 1.
    """
    if not 0.0 < float(momentum) <= 1.0 or not 0.0 <= float(rho) <= 1.0:
        raise ConfigError(f"apgd needs 0 < momentum <= 1 and 0 <= rho <= 1, got momentum={momentum}, rho={rho}")
    stepper = partial(ApgdStepper, steps=int(steps), rho=float(rho), alpha=float(momentum))
    return run_attack(model, x, y, eps=eps, norm=norm, steps=steps, stepper=stepper, restarts=restarts,
                      random_start=random_start, loss=loss, generator=generator)
