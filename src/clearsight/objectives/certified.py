"""Certified training objectives: certified explanations (Wicker et al.) and IBP (Gowal et al.).

Both use the sound interval bounds of `clearsight.bounds` inside the loss, with the radii ramped up over training
from the engine's `progress` (fraction of training done). The bounds are differentiable interval arithmetic, so
neither objective needs double backpropagation. The bounds describe the eval-mode network (Dropout off,
BatchNorm on running statistics); the clean cross-entropy uses the model as it is (training mode in `fit`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clearsight.bounds import gradient_bounds, input_box, interval_forward, margin_bounds
from clearsight.bounds.gradient import OF, Of
from clearsight.errors import ConfigError
from clearsight.objectives.base import OBJECTIVES, LossOutput
from clearsight.objectives.schedule import check_schedule, schedule_factor
from clearsight.options import Fraction, NonNegative


@OBJECTIVES.register("certified-explanation", needs_double_backprop=False, paper="arXiv 2212.08507",
                     standard_at=({"alpha": 0.0}, {"eps": 0.0, "gamma": 0.0}),
                     description="CE + alpha * mean width of sound interval bounds on the input gradient "
                                 "(robust explanation constraints, Wicker et al.)")
def certified_explanation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, alpha: NonNegative = 0.5,
                          eps: NonNegative = 0.1, gamma: NonNegative = 0.0, of: Of = "logit",
                          ramp: Fraction = 0.5, warmup: Fraction = 0.0, **batch: object) -> LossOutput:
    """CE(f(x), y) + alpha * mean width of the interval bound on the input gradient (Wicker et al., arXiv 2212.08507).

    The width upper - lower of `clearsight.bounds.gradient_bounds` over the box of radius eps_t around x (and
    the relative parameter box gamma_t) is averaged over features and samples; both radii ramp linearly from 0
    (until `warmup`) to eps and gamma (at `ramp`) as `progress` goes from 0 to 1. Minimizing the width makes
    the explanation provably stable on the box, which the delta and top-k certificates then verify.

    Args:
        x: inputs [B, ...] in [0, 1]; y: labels [B].
        alpha: weight of the width penalty (authors: 0.1 to 1).
        eps: final l-infinity input radius (authors: up to 0.1).
        gamma: final relative parameter radius (authors: up to 0.05).
        of: the gradient bounded: "logit" (d z_y / dx, the explanation METHODS.md certifies, the default) or
            "ce" (d CE / dx, the loss gradient, which interval-gradient regularizers also use).
        ramp: fraction of training at which eps and gamma reach their final values.
        warmup: fraction of training before the ramp starts (radii 0, penalty 0).
        batch: the engine's `progress` (and `epoch`, unused); without `progress` the final radii are used.

    Returns:
        LossOutput with logs ce, width, eps, gamma and the clean logits. At eps_t = gamma_t = 0 the width is 0.
    """
    check_schedule(warmup, ramp, alpha=alpha, eps=eps, gamma=gamma)
    if of not in OF:
        raise ConfigError(f"of must be one of {', '.join(OF)}, got {of!r}")
    factor = schedule_factor(batch.get("progress"), warmup=warmup, end=ramp)  # type: ignore[arg-type]
    eps_t, gamma_t = eps * factor, gamma * factor
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    lower, upper = gradient_bounds(model, x, y, eps=eps_t, gamma=gamma_t, of=of)
    width = (upper - lower).mean()
    loss = ce + alpha * width
    logs = {"ce": float(ce.detach()), "width": float(width.detach()), "eps": eps_t, "gamma": gamma_t}
    return LossOutput(loss, logs, logits.detach())


@OBJECTIVES.register("ibp", needs_double_backprop=False, paper="arXiv 1810.12715",
                     standard_at=({"kappa_end": 1.0},),
                     description="kappa * CE(clean) + (1 - kappa) * CE(worst-case logits from interval bounds) "
                                 "(certified-prediction baseline, Gowal et al.)")
def ibp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: NonNegative = 0.1,
        kappa_end: Fraction = 0.5, gamma: NonNegative = 0.0, ramp: Fraction = 0.5, warmup: Fraction = 0.0,
        elide: bool = True,
        **batch: object) -> LossOutput:
    """Interval bound propagation training (Gowal et al., arXiv 1810.12715).

    loss = kappa * CE(z, y) + (1 - kappa) * CE(z_worst, y), where z_worst are the worst-case logits over the box
    of radius eps_t: with `elide` (Gowal et al.'s last-layer elision) z_worst_j = -lower(z_y - z_j), the margin
    bounded through the last layer (see `clearsight.bounds.margin_bounds`); without it z_worst_y = lower(z_y)
    and z_worst_j = upper(z_j). eps_t ramps linearly from 0 to eps and kappa from 1 to `kappa_end` between
    `warmup` and `ramp` (fractions of training, from the engine's `progress`).

    Args:
        eps: final l-infinity input radius; gamma: final relative parameter radius (0: plain IBP).
        kappa_end: final weight of the clean loss (Gowal et al.: 0.5).

    Returns:
        LossOutput with logs ce, ce_robust, kappa, eps and the clean logits. At eps_t = gamma_t = 0 the
        worst-case logits equal the logits up to a per-sample shift, so the loss equals CE.
    """
    check_schedule(warmup, ramp, eps=eps, gamma=gamma)
    if not 0.0 <= kappa_end <= 1.0:
        raise ConfigError(f"kappa_end must be in [0, 1], got {kappa_end}")
    factor = schedule_factor(batch.get("progress"), warmup=warmup, end=ramp)  # type: ignore[arg-type]
    eps_t, gamma_t, kappa = eps * factor, gamma * factor, 1.0 - (1.0 - kappa_end) * factor
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    lower, upper = input_box(x, eps_t)
    if elide:
        worst = -margin_bounds(model, lower, upper, y, gamma=gamma_t)
    else:
        z_lower, z_upper = interval_forward(model, lower, upper, gamma=gamma_t)
        worst = torch.where(F.one_hot(y, z_lower.shape[1]).bool(), z_lower, z_upper)
    ce_robust = F.cross_entropy(worst, y)
    loss = kappa * ce + (1.0 - kappa) * ce_robust
    logs = {"ce": float(ce.detach()), "ce_robust": float(ce_robust.detach()), "kappa": kappa, "eps": eps_t}
    return LossOutput(loss, logs, logits.detach())
